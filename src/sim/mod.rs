//! The OrionVM v1 simulator (placeholder until it lands).
