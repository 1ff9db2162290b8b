//! Image and mask resizing, exactly as the official pipeline does it.
