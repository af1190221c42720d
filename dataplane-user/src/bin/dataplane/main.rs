//! `dataplane`: the daemon (`run`) and the operator CLI. `args` is the command line, `cmd`
//! runs each subcommand by calling the library.
//!
//! Exit codes: 0 success; 1 error; 2 bad command line; 3 no daemon running (changing
//! commands); 4 invalid config or change rejected (nothing changed).

mod args;
mod cmd;
mod demo;
mod output;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use dataplane::control::Request;

use args::{Cli, Command, ConfigCommand};
use cmd::Failed;

fn main() -> ExitCode {
    let cli = parse();
    if !matches!(cli.command, Command::Run(_) | Command::Demo(_)) {
        // A command's output cut short (`dataplane rule list | head -1`) ends it quietly, as
        // any Unix filter, instead of a panic in println!. The daemon keeps ignoring SIGPIPE.
        // SAFETY: restoring the default disposition of one signal before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed { code, error }) => {
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}

/// The command line; `--version` also says what this kernel offers the dataplane (probed
/// only then: it needs CAP_BPF).
fn parse() -> Cli {
    let mut command = Cli::command();
    if std::env::args_os().any(|a| a == "--version") {
        command = command.long_version(&*Box::leak(cmd::kernel::long_version().into_boxed_str()));
    }
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn dispatch(cli: Cli) -> Result<(), Failed> {
    let paths = cli.paths;
    match cli.command {
        Command::Run(args) => cmd::run::execute(&paths, args),
        Command::Status { json } => cmd::status::execute(&paths, json),
        Command::Stats(args) => cmd::stats::execute(&paths, &args),
        Command::Top(args) => cmd::top::execute(&paths, &args),
        Command::Class { command } => cmd::class::execute(&paths, command),
        Command::Rule { command } => cmd::rule::execute(&paths, command),
        Command::Reload => cmd::call(&paths, &Request::Reload),
        Command::Config {
            command: ConfigCommand::Check { file, ifaces },
        } => cmd::config::check(&file, &ifaces),
        Command::Detach(args) => cmd::detach::execute(&paths, args),
        Command::Fleet { command } => cmd::fleet::execute(command),
        Command::Kernel { json } => cmd::kernel::execute(json),
        Command::KernelLog { level } => cmd::call(
            &paths,
            &Request::KernelLogLevel {
                level: level.label().to_string(),
            },
        ),
        Command::Demo(args) => Ok(demo::run(&demo::DemoOptions {
            duration: args.duration,
            metrics_addr: (!args.no_metrics).then_some(args.metrics_addr),
        })?),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "dataplane",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Manpages { dir } => cmd::manpages::execute(Cli::command(), &dir),
    }
}
