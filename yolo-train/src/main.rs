use clap::Parser;

/// Train YOLOv8 detectors (loss, optimizer, EMA, checkpoints). Not implemented yet: see issue 5.
#[derive(Parser, Debug)]
#[command(name = "yolo-train", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("yolo-train: no commands yet; run with --help");
    std::process::exit(2);
}
