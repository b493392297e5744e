"""A small but real asyncio program: tasks, gather, a queue, a timeout and an executor."""

import asyncio
import time


async def worker(name, queue, results):
    while True:
        item = await queue.get()
        await asyncio.sleep(0.01)
        results.append((name, item * item))
        queue.task_done()


async def main():
    loop = asyncio.get_running_loop()
    print(f"running on {type(loop).__module__}.{type(loop).__name__}")
    queue = asyncio.Queue()
    results = []
    workers = [asyncio.create_task(worker(f"w{i}", queue, results)) for i in range(4)]
    for i in range(20):
        queue.put_nowait(i)
    started = time.monotonic()
    await queue.join()
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    print(f"processed {len(results)} items in {time.monotonic() - started:.3f}s")
    try:
        async with asyncio.timeout(0.05):
            await asyncio.sleep(10)
    except TimeoutError:
        print("timeout fired as expected")
    total = await loop.run_in_executor(None, sum, range(1000))
    print(f"sum from a thread: {total}")


if __name__ == "__main__":
    asyncio.run(main())
