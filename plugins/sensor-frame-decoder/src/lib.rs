//! Decodes the compact binary frames of a (fictional) sensor vendor into events: one frame per
//! message, one event per frame. The frame format is described in the README.

use weir_guest::prelude::*;

/// The first two bytes of every frame: "WF".
pub const MAGIC: [u8; 2] = *b"WF";
/// The frame version this crate reads and writes.
pub const VERSION: u8 = 1;
/// Bytes before the channel values: magic, version, sensor id, sequence, timestamp, count.
const HEADER_LEN: usize = 18;
/// Bytes of the checksum at the end of a frame.
const CRC_LEN: usize = 2;
/// Channel values are sent in hundredths.
const SCALE: f64 = 100.0;

/// One frame: a sensor's readings at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub sensor_id: u32,
    /// Incremented by the sensor for each frame it sends; wraps around.
    pub seq: u16,
    /// When the readings were taken, in milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// One value per channel, in the sensor's channel order. On the wire each is a whole number
    /// of hundredths in an `i16`, so the range is -327.68 to 327.67.
    pub values: Vec<f64>,
}

/// Encodes `frame` as the sensor would send it. Values are rounded to the nearest hundredth.
/// Fails if a value does not fit the wire format or there are more than 255 values.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, String> {
    let count = u8::try_from(frame.values.len())
        .map_err(|_| format!("{} values, a frame holds at most 255", frame.values.len()))?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + 2 * frame.values.len() + CRC_LEN);
    bytes.extend_from_slice(&MAGIC);
    bytes.push(VERSION);
    bytes.extend_from_slice(&frame.sensor_id.to_le_bytes());
    bytes.extend_from_slice(&frame.seq.to_le_bytes());
    bytes.extend_from_slice(&frame.ts_ms.to_le_bytes());
    bytes.push(count);
    for &value in &frame.values {
        let hundredths = (value * SCALE).round();
        if !(f64::from(i16::MIN)..=f64::from(i16::MAX)).contains(&hundredths) {
            return Err(format!("value {value} is outside -327.68..=327.67"));
        }
        bytes.extend_from_slice(&(hundredths as i16).to_le_bytes());
    }
    let crc = crc16(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    Ok(bytes)
}

/// Parses one frame, or says precisely what is wrong with it.
pub fn parse(bytes: &[u8]) -> Result<Frame, String> {
    let min = HEADER_LEN + CRC_LEN;
    if bytes.len() < min {
        return Err(format!(
            "frame too short: {} bytes, at least {min} expected",
            bytes.len()
        ));
    }
    if bytes[0..2] != MAGIC {
        return Err(format!(
            "bad magic 0x{:02x}{:02x}, expected 0x{:02x}{:02x}",
            bytes[0], bytes[1], MAGIC[0], MAGIC[1]
        ));
    }
    if bytes[2] != VERSION {
        return Err(format!(
            "unsupported frame version {}, expected {VERSION}",
            bytes[2]
        ));
    }
    let count = usize::from(bytes[17]);
    let expected = HEADER_LEN + 2 * count + CRC_LEN;
    if bytes.len() != expected {
        return Err(format!(
            "frame of {} bytes for {count} values, expected {expected} bytes",
            bytes.len()
        ));
    }
    let (body, crc) = bytes.split_at(expected - CRC_LEN);
    let sent = u16::from_le_bytes([crc[0], crc[1]]);
    let computed = crc16(body);
    if sent != computed {
        return Err(format!(
            "bad checksum 0x{sent:04x}, computed 0x{computed:04x}"
        ));
    }
    Ok(Frame {
        sensor_id: u32::from_le_bytes(body[3..7].try_into().expect("4 bytes")),
        seq: u16::from_le_bytes([body[7], body[8]]),
        ts_ms: u64::from_le_bytes(body[9..17].try_into().expect("8 bytes")),
        values: body[HEADER_LEN..]
            .chunks_exact(2)
            .map(|v| f64::from(i16::from_le_bytes([v[0], v[1]])) / SCALE)
            .collect(),
    })
}

/// CRC-16/CCITT-FALSE: polynomial 0x1021, initial value 0xFFFF, no reflection, no final XOR.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
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

#[operator]
pub struct SensorFrameDecoder {
    /// The name of each channel, in the order the sensor sends them.
    channels: Vec<String>,
    /// Put before the sensor id to make the event's key, e.g. "field-3/".
    #[serde(default)]
    key_prefix: String,
}

impl Decode for SensorFrameDecoder {
    fn init(&mut self) -> Result<(), String> {
        if self.channels.is_empty() {
            return Err("channels is empty: name the sensor's channels, in order".into());
        }
        if self.channels.len() > 255 {
            return Err(format!(
                "{} channels, a frame holds at most 255",
                self.channels.len()
            ));
        }
        for (i, name) in self.channels.iter().enumerate() {
            if name == "seq" {
                return Err("channel name \"seq\" is taken by the frame's sequence number".into());
            }
            if self.channels[..i].contains(name) {
                return Err(format!("channel {name:?} is named twice"));
            }
        }
        Ok(())
    }

    fn decode(&mut self, message: Message, ctx: &mut Context) -> Result<(), String> {
        let frame = parse(&message.payload)?;
        if frame.values.len() != self.channels.len() {
            return Err(format!(
                "frame has {} channels, config names {} ({})",
                frame.values.len(),
                self.channels.len(),
                self.channels.join(", ")
            ));
        }
        let ts_ms = i64::try_from(frame.ts_ms)
            .map_err(|_| format!("timestamp {} ms is out of range", frame.ts_ms))?;
        let mut event = Event::new(format!("{}{}", self.key_prefix, frame.sensor_id), ts_ms);
        for (name, &value) in self.channels.iter().zip(&frame.values) {
            event.set(name.as_str(), value);
        }
        event.set("seq", i64::from(frame.seq));
        ctx.emit(event);
        Ok(())
    }
}

weir_guest::export_decode!(SensorFrameDecoder);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_guest::testing::Harness;

    const CONFIG: &str = r#"channels = ["temp", "humidity", "soil_moisture"]
key_prefix = "north/""#;

    fn frame() -> Frame {
        Frame {
            sensor_id: 4711,
            seq: 65535,
            ts_ms: 1_700_000_000_123,
            values: vec![-3.25, 87.5, 31.07],
        }
    }

    fn decode(payloads: Vec<Vec<u8>>) -> weir_guest::testing::Outcome {
        let mut op = Harness::<SensorFrameDecoder>::decoder(CONFIG).unwrap();
        op.decode(
            payloads
                .into_iter()
                .map(|p| Message::new("sensors/raw", p, 0))
                .collect(),
        )
    }

    fn rejection(payload: Vec<u8>) -> String {
        let out = decode(vec![payload]);
        assert!(out.events.is_empty());
        out.rejected.into_iter().next().expect("a rejection").1
    }

    #[test]
    fn crc_is_crc16_ccitt_false() {
        assert_eq!(crc16(b"123456789"), 0x29B1);
    }

    #[test]
    fn encodes_the_documented_layout() {
        let bytes = encode(&frame()).unwrap();
        #[rustfmt::skip]
        let body = [
            b'W', b'F', 1,                                  // magic, version
            0x67, 0x12, 0x00, 0x00,                         // sensor id 4711
            0xFF, 0xFF,                                     // seq 65535
            0x7B, 0x68, 0xE5, 0xCF, 0x8B, 0x01, 0x00, 0x00, // ts 1_700_000_000_123
            3,                                              // count
            0xBB, 0xFE,                                     // -325
            0x2E, 0x22,                                     // 8750
            0x23, 0x0C,                                     // 3107
        ];
        assert_eq!(bytes[..body.len()], body);
        assert_eq!(bytes[body.len()..], [0x68, 0x44]); // CRC 0x4468, as in the README
        assert_eq!(parse(&bytes).unwrap(), frame());
    }

    #[test]
    fn decodes_a_frame_into_an_event() {
        let out = decode(vec![encode(&frame()).unwrap()]);
        assert!(out.rejected.is_empty(), "{:?}", out.rejected);
        let expected = Event::new("north/4711", 1_700_000_000_123)
            .with("temp", -3.25)
            .with("humidity", 87.5)
            .with("soil_moisture", 31.07)
            .with("seq", 65535_i64);
        assert_eq!(out.events, vec![expected]);
    }

    #[test]
    fn rejects_bad_frames_one_by_one_and_keeps_the_good_ones() {
        let good = encode(&frame()).unwrap();
        let mut corrupt = good.clone();
        corrupt[20] ^= 0x01;
        let out = decode(vec![good.clone(), corrupt, good]);
        assert_eq!(out.events.len(), 2);
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].0, 1);
        assert!(
            out.rejected[0].1.starts_with("bad checksum"),
            "{}",
            out.rejected[0].1
        );
    }

    #[test]
    fn says_why_a_frame_is_rejected() {
        let good = encode(&frame()).unwrap();
        assert_eq!(
            rejection(good[..7].to_vec()),
            "frame too short: 7 bytes, at least 20 expected"
        );

        let mut magic = good.clone();
        magic[0] = 0x00;
        assert_eq!(rejection(magic), "bad magic 0x0046, expected 0x5746");

        let mut version = good.clone();
        version[2] = 2;
        assert_eq!(
            rejection(version),
            "unsupported frame version 2, expected 1"
        );

        let truncated = good[..good.len() - 1].to_vec();
        assert_eq!(
            rejection(truncated),
            "frame of 25 bytes for 3 values, expected 26 bytes"
        );

        let mut checksum = good.clone();
        let last = checksum.len() - 1;
        checksum[last] ^= 0xFF;
        let sent = u16::from_le_bytes([checksum[last - 1], checksum[last]]);
        let computed = crc16(&good[..last - 1]);
        assert_eq!(
            rejection(checksum),
            format!("bad checksum 0x{sent:04x}, computed 0x{computed:04x}")
        );

        let two = encode(&Frame {
            values: vec![1.0, 2.0],
            ..frame()
        })
        .unwrap();
        assert_eq!(
            rejection(two),
            "frame has 2 channels, config names 3 (temp, humidity, soil_moisture)"
        );

        let late = encode(&Frame {
            ts_ms: u64::MAX,
            ..frame()
        })
        .unwrap();
        assert_eq!(
            rejection(late),
            "timestamp 18446744073709551615 ms is out of range"
        );
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut seed: u32 = 1;
        let payloads = (0..500)
            .map(|len| {
                (0..len % 40)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        (seed >> 24) as u8
                    })
                    .collect()
            })
            .collect();
        let out = decode(payloads);
        assert_eq!(out.rejected.len() + out.events.len(), 500);
    }

    #[test]
    fn encode_refuses_values_that_do_not_fit() {
        assert_eq!(
            encode(&Frame {
                values: vec![327.68],
                ..frame()
            })
            .unwrap_err(),
            "value 327.68 is outside -327.68..=327.67"
        );
        assert!(
            encode(&Frame {
                values: vec![-327.68, 327.67],
                ..frame()
            })
            .is_ok()
        );
        assert!(
            encode(&Frame {
                values: vec![0.0; 256],
                ..frame()
            })
            .is_err()
        );
    }

    #[test]
    fn checks_its_channel_names_at_load_time() {
        let err = Harness::<SensorFrameDecoder>::decoder("channels = []").unwrap_err();
        assert!(err.starts_with("channels is empty"), "{err}");
        let err = Harness::<SensorFrameDecoder>::decoder(r#"channels = ["t", "seq"]"#).unwrap_err();
        assert!(err.contains("\"seq\" is taken"), "{err}");
        let err =
            Harness::<SensorFrameDecoder>::decoder(r#"channels = ["t", "h", "t"]"#).unwrap_err();
        assert_eq!(err, "channel \"t\" is named twice");
    }
}
