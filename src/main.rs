use clap::Parser;

fn main() {
    let cli = softvi::cli::Cli::parse();
    match softvi::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
