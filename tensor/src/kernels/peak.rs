//! FMA throughput probe. PLACEHOLDER, to be written.
