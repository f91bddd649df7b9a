//! hookd binary
fn main() {}
