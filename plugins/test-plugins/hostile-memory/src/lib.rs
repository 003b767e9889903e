//! A hostile operator for weir's tests: `process` allocates memory without bound, so only the
//! host's memory cap can stop it.

use weir_guest::prelude::*;

const CHUNK: usize = 1 << 20;
const PAGE: usize = 4096;

#[operator]
pub struct HostileMemory {}

impl Transform for HostileMemory {
    fn process(&mut self, _event: Event, _ctx: &mut Context) -> Result<(), String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; CHUNK];
            // Write to every page so the memory is really used, not just reserved.
            for byte in chunk.iter_mut().step_by(PAGE) {
                *byte = 1;
            }
            hoard.push(std::hint::black_box(chunk));
        }
    }
}

weir_guest::export_transform!(HostileMemory);
