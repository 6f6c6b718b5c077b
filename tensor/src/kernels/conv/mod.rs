//! conv2d (NCHW): forward, backward-data and backward-weight. PLACEHOLDER, to be written.
