//! Process memory housekeeping.

/// Hand memory that the allocator holds but no longer uses back to the operating system.
///
/// Loading a model frees as much memory as the model keeps (the checkpoint's tensors, once copied into the
/// model's layout); glibc keeps freed blocks of up to 32 MB in its heap, where they would stay counted in the
/// process's resident memory. [`crate::Sam::load`] calls this at the end. A no-op where the C library is not glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns unused pages of the allocator's arenas; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
