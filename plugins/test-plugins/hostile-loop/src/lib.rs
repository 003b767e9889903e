//! A hostile operator for weir's tests: `process` never returns, so only the host's time budget
//! can stop it.

use weir_guest::prelude::*;

#[operator]
pub struct HostileLoop {}

impl Transform for HostileLoop {
    fn process(&mut self, _event: Event, _ctx: &mut Context) -> Result<(), String> {
        let mut spins: u64 = 0;
        loop {
            // `black_box` keeps the optimizer from proving the loop useless.
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
    }
}

weir_guest::export_transform!(HostileLoop);
