use aya::{include_bytes_aligned, Ebpf};
fn main() -> anyhow::Result<()> {
    let mut ebpf = aya::EbpfLoader::new().load(include_bytes_aligned!(concat!(env!("OUT_DIR"), "/classifier")))?;
    for (name, prog) in ebpf.programs_mut() {
        println!("{name}");
        prog_load(name, prog)?;
    }
    let _ = Ebpf::load;
    Ok(())
}
fn prog_load(name: &str, prog: &mut aya::programs::Program) -> anyhow::Result<()> {
    use aya::programs::Program::*;
    match prog {
        TracePoint(p) => p.load()?,
        RawTracePoint(p) => p.load()?,
        _ => anyhow::bail!("unexpected {name}"),
    }
    Ok(())
}
