//! Counter-based RNG. PLACEHOLDER, to be written.
