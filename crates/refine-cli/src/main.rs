//! `refine-cli`: train a refine head over a frozen base CNN from the command line.
//!
//! Logs and progress go to stderr; stdout carries the summary or, with `--json`, the report.

// Argument doc comments are clap's help text, where `<dataset>` is a placeholder, not HTML.
#![allow(rustdoc::invalid_html_tags)]

mod args;
mod bench;
mod commands;
mod output;
mod predict;
mod progress;
mod summary;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet_and_verbose = match &cli.command {
        None => (cli.run.common.quiet, cli.run.common.verbose),
        Some(Command::Run(a)) => (a.common.quiet, a.common.verbose),
        Some(Command::Pretrain(a)) => (a.common.quiet, a.common.verbose),
        Some(Command::Refine(a)) => (a.common.quiet, a.common.verbose),
        Some(Command::Eval(a)) => (a.common.quiet, a.common.verbose),
        Some(Command::Predict(a)) => (a.common.quiet, a.common.verbose),
        Some(Command::Inspect(a)) => (a.common.quiet, a.common.verbose),
        Some(Command::Bench(a)) => (a.common.quiet, a.common.verbose),
    };
    let ui = progress::Ui::new(quiet_and_verbose.0);
    ui.init_logging(quiet_and_verbose.1);
    let result = match &cli.command {
        None => commands::run(&cli.run, &ui),
        Some(Command::Run(args)) => commands::run(args, &ui),
        Some(Command::Pretrain(args)) => commands::pretrain(args, &ui),
        Some(Command::Refine(args)) => commands::refine(args, &ui),
        Some(Command::Eval(args)) => commands::eval(args),
        Some(Command::Predict(args)) => predict::predict(args),
        Some(Command::Inspect(args)) => predict::inspect(args),
        Some(Command::Bench(args)) => bench::bench(args, &ui),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
