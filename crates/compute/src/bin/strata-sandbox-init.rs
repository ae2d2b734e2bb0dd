//! The sandbox init: Strata starts this program to build each sandbox.

fn main() {
    strata_compute::maybe_run_init();
    eprintln!("strata-sandbox-init is started by Strata's compute layer, not by hand");
    std::process::exit(2);
}
