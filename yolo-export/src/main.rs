use clap::Parser;

/// Export YOLOv8 checkpoints to ONNX. Not implemented yet: see the export issue.
#[derive(Parser, Debug)]
#[command(name = "yolo-export", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("yolo-export: no commands yet; run with --help");
    std::process::exit(2);
}
