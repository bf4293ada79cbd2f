//! Compiles `proto/nodemaint/v1/*.proto` with protox (pure Rust), so no
//! system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/nodemaint/v1/types.proto",
        "proto/nodemaint/v1/agent.proto",
        "proto/nodemaint/v1/events.proto",
        "proto/nodemaint/v1/jobs.proto",
        "proto/nodemaint/v1/api.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
