//! The sandbox init the compute crate's own tests start (the server ships the
//! cli package's `strata-sandbox-init`, the same program).

fn main() {
    strata_compute::maybe_run_init();
    eprintln!("strata-compute-init is started by Strata's compute layer, not by hand");
    std::process::exit(2);
}
