//! One file per step of the showcase, each an `impl Demo` block with the step's method.

mod briefing;
mod cleanup;
mod generate_data;
mod index_and_retrieve;
mod ops_checks;
mod register_candidates;
mod safer_promote_flow;
mod scenario_simulate_and_save;
mod train_and_backtest;
