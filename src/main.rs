//! The `taskbroker` binary: everything is in the library's `cli` module.

fn main() -> std::process::ExitCode {
    taskbroker::cli::main()
}
