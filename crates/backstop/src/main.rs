//! The `backstop` binary; everything lives in the library (see `cli`).

fn main() -> std::process::ExitCode {
    backstop::cli::main()
}
