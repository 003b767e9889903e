//! A test operator for weir's hot-swap tests: its `init` always fails, so weir must refuse to
//! swap it in and keep the version that runs.

use weir_guest::prelude::*;

#[operator]
pub struct BrokenInit {}

impl Transform for BrokenInit {
    fn init(&mut self) -> Result<(), String> {
        Err("this version refuses to start".into())
    }

    fn process(&mut self, event: Event, ctx: &mut Context) -> Result<(), String> {
        ctx.emit(event);
        Ok(())
    }
}

weir_guest::export_transform!(BrokenInit);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_guest::testing::Harness;

    #[test]
    fn refuses_to_start() {
        let err = Harness::<BrokenInit>::transform("").unwrap_err();
        assert_eq!(err, "this version refuses to start");
    }
}
