//! The small sandbox init: the server starts it to build each sandbox when
//! it sits beside the `strata` binary and comes from the same build (see
//! `strata_compute::init_beside`). It starts about a millisecond faster than
//! the `strata` binary, which can act as the init too.

fn main() {
    strata_compute::maybe_run_init();
    eprintln!("strata-sandbox-init is started by Strata's server to build sandboxes, not by hand");
    std::process::exit(2);
}
