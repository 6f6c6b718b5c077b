//! Group normalisation kernels. PLACEHOLDER, to be written.
