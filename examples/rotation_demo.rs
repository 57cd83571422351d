//! Run with: cargo run --example rotation_demo
fn main() {
    println!("rotation demo: not built yet");
}
