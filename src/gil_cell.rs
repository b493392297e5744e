//! Interior mutability for state that is only touched while the GIL is held.
//!
//! The extension is built for GIL-enabled CPython (the module does not declare
//! free-threading support), so the GIL serialises every call into it. `RefCell`
//! keeps re-entrancy honest: a Python callback that re-enters the loop while a
//! borrow is alive becomes a Python exception instead of undefined behaviour.

use pyo3::Python;
use std::cell::{RefCell, RefMut};

pub struct GilRefCell<T>(RefCell<T>);

// SAFETY: every access goes through `borrow_mut`, which demands a `Python<'_>`
// token, i.e. the GIL is held and no other thread can be inside at the same time.
unsafe impl<T: Send> Sync for GilRefCell<T> {}

impl<T> GilRefCell<T> {
    pub fn new(value: T) -> Self {
        GilRefCell(RefCell::new(value))
    }

    pub fn into_inner(self) -> T {
        self.0.into_inner()
    }

    /// Exclusive access without a borrow flag check (`&mut self` proves it).
    #[inline]
    pub fn get_mut(&mut self) -> &mut T {
        self.0.get_mut()
    }

    #[inline]
    pub fn borrow_mut<'a>(&'a self, _py: Python<'_>) -> RefMut<'a, T> {
        self.0.borrow_mut()
    }

    /// Like `borrow_mut`, but reports a re-entrant access as an error value
    /// rather than a panic.
    #[inline]
    pub fn try_borrow_mut<'a>(&'a self, _py: Python<'_>) -> Option<RefMut<'a, T>> {
        self.0.try_borrow_mut().ok()
    }

    /// For the GC slots (`__traverse__`/`__clear__`), which CPython only calls
    /// with the GIL held but without handing us a token. A busy cell is skipped:
    /// under-reporting references only keeps objects alive, never frees them early.
    #[inline]
    pub fn try_borrow_mut_in_gc(&self) -> Option<RefMut<'_, T>> {
        self.0.try_borrow_mut().ok()
    }
}

/// Whether a `Py<T>` field still holds the zero bytes of a freshly allocated,
/// not yet initialised object (see the GC slots that call this).
pub fn is_null_py<T>(field: &pyo3::Py<T>) -> bool {
    // SAFETY: a Py<T> is one non-null pointer once initialised; before that the
    // allocator zero-filled it. Reading the bytes as a raw pointer is fine either way.
    unsafe { std::ptr::read_volatile((field as *const pyo3::Py<T>).cast::<*const u8>()) }.is_null()
}
