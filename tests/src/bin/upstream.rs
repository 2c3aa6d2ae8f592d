//! `classify-upstream [ADDR]`: the test upstream as a standalone server (used by
//! `cargo xtask demo`). Serves until killed.
fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18081".to_owned());
    let up = classify_tests::upstream::Upstream::bind(&addr);
    eprintln!("classify-upstream: listening on {}", up.addr());
    loop {
        std::thread::park();
    }
}
