//! safetensors I/O. PLACEHOLDER, to be written.
