//! The demo's sensors speak the binary frame of `plugins/sensor-frame-decoder` (its README is the
//! spec): the simulator's JSON readings are re-encoded as frames before they are published, so the
//! farm pipeline starts with a decoder plugin, as a LoRa or RS-485 gateway's would. A payload
//! that is not a reading (the simulator's garbage) is sent as it is, and the decoder sends it to
//! the dead-letter output with the reason.

use serde_json::Value;

/// The event key the decoder makes of sensor `n`: `key_prefix` (this) and `n` in decimal.
pub const KEY_PREFIX: &str = "sensor-";
/// The frame's channels, in order; the decoder's `channels` config names them the same.
pub const CHANNELS: [&str; 2] = ["temp", "humidity"];

/// The frame of a simulator reading (`{"sensor_id":"s0042","ts":…,"temp":…,"humidity":…}`), or
/// `None` when `payload` is not one.
pub fn from_reading(payload: &[u8]) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let sensor = sensor_number(v.get("sensor_id")?.as_str()?)?;
    let ts_ms = u64::try_from(v.get("ts")?.as_i64()?).ok()?;
    let values = CHANNELS
        .iter()
        .map(|c| v.get(*c)?.as_f64())
        .collect::<Option<Vec<f64>>>()?;
    // The sequence number a sensor would put in: one per second of its clock (a resend repeats
    // its frame byte for byte, as the simulator's JSON does).
    let seq = (ts_ms / 1000) as u16;
    encode(sensor, seq, ts_ms, &values)
}

/// The digits of a simulator sensor id (`s0042` → 42).
fn sensor_number(id: &str) -> Option<u32> {
    id.trim_start_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()
}

/// A frame: magic `WF`, version 1, sensor id, sequence, timestamp, channel count, values in
/// hundredths, CRC-16/CCITT-FALSE of everything before it; little-endian. `None` for a value
/// outside −327.68..=327.67.
pub fn encode(sensor: u32, seq: u16, ts_ms: u64, values: &[f64]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(20 + 2 * values.len());
    out.extend_from_slice(b"WF");
    out.push(1);
    out.extend_from_slice(&sensor.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&ts_ms.to_le_bytes());
    out.push(u8::try_from(values.len()).ok()?);
    for v in values {
        let hundredths = (v * 100.0).round();
        if !(f64::from(i16::MIN)..=f64::from(i16::MAX)).contains(&hundredths) {
            return None;
        }
        out.extend_from_slice(&(hundredths as i16).to_le_bytes());
    }
    let crc = crc16(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Some(out)
}

/// CRC-16/CCITT-FALSE: polynomial 0x1021, initial 0xFFFF, no reflection, no final XOR.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The simulator's sensor table (`sensor_id,location,…`) with each id as the decoder keys it
/// (`s0042` → `sensor-42`), for the enrichment join.
pub fn sensor_table(csv: &str) -> String {
    let mut out = String::with_capacity(csv.len() + csv.len() / 4);
    for (i, line) in csv.lines().enumerate() {
        match line.split_once(',') {
            Some((id, rest)) if i > 0 => match sensor_number(id) {
                Some(n) => out.push_str(&format!("{KEY_PREFIX}{n},{rest}")),
                None => out.push_str(line),
            },
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_example_frame_byte_for_byte() {
        let frame = encode(4711, 65535, 1_700_000_000_123, &[-3.25, 87.5, 31.07]).unwrap();
        let want = [
            0x57, 0x46, 0x01, 0x67, 0x12, 0x00, 0x00, 0xff, 0xff, 0x7b, 0x68, 0xe5, 0xcf, 0x8b,
            0x01, 0x00, 0x00, 0x03, 0xbb, 0xfe, 0x2e, 0x22, 0x23, 0x0c, 0x68, 0x44,
        ];
        assert_eq!(frame, want);
        assert_eq!(crc16(b"123456789"), 0x29B1, "the standard check value");
    }

    #[test]
    fn readings_become_frames_and_garbage_does_not() {
        let reading = br#"{"sensor_id":"s0042","ts":1700000000000,"temp":21.4,"humidity":55.0}"#;
        let frame = from_reading(reading).unwrap();
        assert_eq!(frame.len(), 24);
        assert_eq!(&frame[3..7], &42u32.to_le_bytes());
        assert_eq!(&frame[9..17], &1_700_000_000_000u64.to_le_bytes());
        assert_eq!(
            from_reading(reading),
            Some(frame),
            "the same reading, the same bytes"
        );
        assert_eq!(from_reading(br#"{"sensor_id":"s0042","ts":17"#), None);
        assert_eq!(from_reading(b"temp=3.1;hum=NaN"), None);
        assert_eq!(encode(1, 0, 0, &[400.0]), None, "out of a frame's range");
    }

    #[test]
    fn the_table_is_keyed_as_the_decoder_keys() {
        let csv = "sensor_id,location,crop,calibration\ns0042,north-01,wheat,0.10\n";
        assert_eq!(
            sensor_table(csv),
            "sensor_id,location,crop,calibration\nsensor-42,north-01,wheat,0.10\n"
        );
    }
}
