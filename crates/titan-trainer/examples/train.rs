//! The trainer as a program: `cargo run -p titan-trainer --example train -- [options]`.
fn main() {
    std::process::exit(titan_trainer::run_main(
        &titan_trainer::Registry::default(),
        std::env::args().skip(1).collect(),
    ));
}
