//! Nothing here: the benchmark is `benches/per_request.rs`.
