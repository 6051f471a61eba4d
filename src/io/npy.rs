//! NumPy `.npy` files (format 1.0 / 2.0, little-endian, C order): float32 writing; reading
//! of float32/64, int32/64, uint8/32/64 and bool arrays; `.npz` archives of them.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use crate::error::{Context, Error, Result, bail, ensure};

/// An array read from a `.npy` file, converted to f32.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Values in C order.
    pub data: Vec<f32>,
}

/// Encodes a float32 array of `shape` (C order) as `.npy` bytes.
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    debug_assert_eq!(shape.iter().product::<usize>(), data.len());
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes a float32 `.npy` file.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let mut file = std::fs::File::create(path).map_err(|e| Error::io("cannot create", path, e))?;
    file.write_all(&encode_f32(shape, data))
        .map_err(|e| Error::io("cannot write", path, e))?;
    Ok(())
}

/// A numeric array of any supported dtype, its values widened to f64.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyValues {
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Values in C order.
    pub data: Vec<f64>,
    /// The NumPy dtype string, e.g. `<f4`, `<i8`, `|b1`.
    pub dtype: String,
}

/// Encodes `data` (C order) as `.npy` bytes of dtype `dtype` (`<f4`, `<f8`, `<i4`, `<i8`,
/// `|b1`): for writing test inputs and MDP files.
/// An int32 `.npy` of the given shape.
pub fn encode_i32(shape: &[usize], data: &[i32]) -> Vec<u8> {
    let wide: Vec<f64> = data.iter().map(|&x| x as f64).collect();
    encode("<i4", shape, &wide)
}

/// A `.npy` file of `data` (row-major, `shape`), its values converted from f64 to `dtype`:
/// `<f4`, `<f8`, `<i4`, `<i8` or `|b1` (nonzero is true); another dtype panics.
pub fn encode(dtype: &str, shape: &[usize], data: &[f64]) -> Vec<u8> {
    let mut out = encode_f32(shape, &vec![0.0; data.len()]);
    let header_end = out.len() - 4 * data.len();
    out.truncate(header_end);
    let header = String::from_utf8_lossy(&out[10..]).replace("<f4", dtype);
    out.truncate(10);
    out.extend_from_slice(header.as_bytes());
    for &v in data {
        match dtype {
            "<f4" => out.extend_from_slice(&(v as f32).to_le_bytes()),
            "<f8" => out.extend_from_slice(&v.to_le_bytes()),
            "<i4" => out.extend_from_slice(&(v as i32).to_le_bytes()),
            "<i8" => out.extend_from_slice(&(v as i64).to_le_bytes()),
            "|b1" => out.push((v != 0.0) as u8),
            _ => panic!("encode: unsupported dtype {dtype}"),
        }
    }
    out
}

/// Decodes `.npy` bytes of any supported dtype.
pub fn decode(bytes: &[u8]) -> Result<NpyValues> {
    let (shape, dtype, body) = parse_header(bytes)?;
    let width = match dtype.as_str() {
        "<f8" | "<i8" | "<u8" => 8,
        "<f4" | "<i4" | "<u4" => 4,
        "|b1" | "|u1" => 1,
        other => bail!("dtype {other} is not float32/64, int32/64, uint8/32/64 or bool"),
    };
    let bytes = shape
        .iter()
        .try_fold(width, |acc: usize, &d| acc.checked_mul(d))
        .with_context(|| {
            format!(
                "shape {shape:?} holds more entries than fit in memory (the product of its \
                 dimensions overflows); the file has {} data bytes",
                body.len()
            )
        })?;
    ensure!(
        body.len() == bytes,
        "shape {shape:?} needs {bytes} data bytes, the file has {}",
        body.len()
    );
    let data = body
        .chunks_exact(width)
        .map(|b| match dtype.as_str() {
            "<f8" => f64::from_le_bytes(b.try_into().expect("8 bytes")),
            "<i8" => i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64,
            "<u8" => u64::from_le_bytes(b.try_into().expect("8 bytes")) as f64,
            "<f4" => f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64,
            "<i4" => i32::from_le_bytes(b.try_into().expect("4 bytes")) as f64,
            "<u4" => u32::from_le_bytes(b.try_into().expect("4 bytes")) as f64,
            _ => b[0] as f64,
        })
        .collect();
    Ok(NpyValues { shape, data, dtype })
}

/// Reads every array of a NumPy `.npz` archive (stored or deflated), by name without the
/// `.npy` suffix; errors name the file (`what` it is, e.g. "MDP file") and the entry or array.
pub fn read_npz(path: &Path, what: &str) -> Result<HashMap<String, NpyValues>> {
    use std::io::Read;
    // A device or FIFO is no archive (and /dev/zero or a FIFO never ends).
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => {
            return Err(Error::InvalidInput(format!(
                "{what} {} is not a regular file: softvi reads its inputs from files",
                path.display()
            )));
        }
        _ => {}
    }
    let file =
        std::fs::File::open(path).map_err(|e| Error::io(format!("cannot read {what}"), path, e))?;
    let mut archive = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not an .npz (zip) archive", path.display()))?;
    let mut arrays = HashMap::new();
    for i in 0..archive.len() {
        let unreadable = || format!("{}: entry {i} of the archive", path.display());
        let mut entry = archive.by_index(i).with_context(unreadable)?;
        let name = entry
            .name()
            .with_context(unreadable)?
            .trim_end_matches(".npy")
            .to_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).with_context(unreadable)?;
        let array =
            decode(&bytes).with_context(|| format!("{}: array {name:?}", path.display()))?;
        arrays.insert(name, array);
    }
    Ok(arrays)
}

/// An uncompressed `.npz` archive (as `numpy.savez` writes) of `.npy` files given as
/// (name without `.npy`, bytes).
pub fn encode_npz(arrays: &[(&str, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in arrays {
        zip.start_file(format!("{name}.npy"), stored)
            .with_context(|| format!("npz entry {name}"))?;
        zip.write_all(bytes)
            .map_err(|e| Error::InvalidInput(format!("npz entry {name}: {e}")))?;
    }
    let cursor = zip.finish().context("finishing the npz archive")?;
    Ok(cursor.into_inner())
}

/// Reads a float32 or float64 `.npy` file as f32.
pub fn read_float(path: &Path) -> Result<NpyArray> {
    let bytes = crate::io::output::read_input(path, "array file")?;
    decode_float(&bytes).with_context(|| format!("{} is not a usable .npy file", path.display()))
}

/// Decodes `.npy` bytes holding float32 or float64 values (little-endian, C order).
pub fn decode_float(bytes: &[u8]) -> Result<NpyArray> {
    let (_, dtype, _) = parse_header(bytes)?;
    ensure!(
        dtype == "<f4" || dtype == "<f8",
        "dtype {dtype} is not float32 or float64 (little-endian)"
    );
    let values = decode(bytes)?;
    Ok(NpyArray {
        shape: values.shape,
        data: values.data.iter().map(|&v| v as f32).collect(),
    })
}

/// Decodes `.npy` bytes holding float32 values bit for bit (every NaN payload and -0.0 kept),
/// for copying arrays softvi wrote (`softvi merge`); other dtypes are refused.
pub fn decode_f32(bytes: &[u8]) -> Result<NpyArray> {
    let (shape, dtype, body) = parse_header(bytes)?;
    ensure!(
        dtype == "<f4",
        "dtype {dtype} is not float32 (little-endian)"
    );
    let entries = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .context("the product of the shape's dimensions overflows")?;
    ensure!(
        Some(body.len()) == entries.checked_mul(4),
        "shape {shape:?} needs {} data bytes, the file has {}",
        entries.saturating_mul(4),
        body.len()
    );
    let data = body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    Ok(NpyArray { shape, data })
}

/// Shape, dtype and data bytes of a `.npy` file.
fn parse_header(bytes: &[u8]) -> Result<(Vec<usize>, String, &[u8])> {
    ensure!(
        bytes.len() >= 10 && &bytes[..6] == b"\x93NUMPY",
        "missing the NumPy magic bytes"
    );
    let (header_start, header_len) = match bytes[6] {
        1 => (10, u16::from_le_bytes([bytes[8], bytes[9]]) as usize),
        2 | 3 => {
            ensure!(bytes.len() >= 12, "truncated header");
            (
                12,
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            )
        }
        v => bail!("unsupported .npy format version {v}"),
    };
    ensure!(bytes.len() >= header_start + header_len, "truncated header");
    let header = std::str::from_utf8(&bytes[header_start..header_start + header_len])
        .context("header is not text")?;
    let field = |key: &str| -> Result<&str> {
        let at = header
            .find(&format!("'{key}'"))
            .with_context(|| format!("header has no '{key}'"))?;
        Ok(header[at + key.len() + 2..]
            .trim_start()
            .trim_start_matches(':')
            .trim_start())
    };
    let descr = field("descr")?;
    let dtype = descr
        .trim_start_matches('\'')
        .split('\'')
        .next()
        .unwrap_or_default()
        .replace('=', "<");
    ensure!(
        field("fortran_order")?.starts_with("False"),
        "Fortran-ordered arrays are not supported"
    );
    let shape_text = field("shape")?;
    let close = shape_text.find(')').context("malformed shape")?;
    let shape: Vec<usize> = shape_text[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .with_context(|| format!("malformed shape entry {s:?}"))
        })
        .collect::<Result<_>>()?;
    Ok((shape, dtype, &bytes[header_start + header_len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_header_alignment() {
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
        let bytes = encode_f32(&[2, 3, 4], &data);
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let back = decode_float(&bytes).unwrap();
        assert_eq!(
            back,
            NpyArray {
                shape: vec![2, 3, 4],
                data
            }
        );
        let one = decode_float(&encode_f32(&[3], &[1.0, 2.0, 3.0])).unwrap();
        assert_eq!(one.shape, vec![3]);
    }

    #[test]
    fn decode_f32_keeps_every_bit() {
        let data = [f32::from_bits(0x7fc0_1234), -0.0, f32::NEG_INFINITY, 1.5];
        let back = decode_f32(&encode_f32(&[2, 2], &data)).unwrap();
        assert_eq!(back.shape, vec![2, 2]);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.data), bits(&data));
        let wide = encode("<f8", &[1], &[1.0]);
        assert!(decode_f32(&wide).unwrap_err().to_string().contains("<f8"));
    }

    #[test]
    fn typed_round_trip() {
        for dtype in ["<f8", "<i4", "<i8", "|b1"] {
            let data = [0.0, 1.0, 1.0, 0.0, 1.0, 0.0];
            let back = decode(&encode(dtype, &[2, 3], &data)).unwrap();
            assert_eq!(
                (back.shape, back.data, back.dtype),
                (vec![2, 3], data.to_vec(), dtype.to_owned())
            );
        }
    }

    #[test]
    fn rejects_wrong_dtype_and_size() {
        let mut bytes = encode_f32(&[2], &[1.0, 2.0]);
        bytes.pop();
        assert!(
            decode_float(&bytes)
                .unwrap_err()
                .to_string()
                .contains("data bytes")
        );
        let mut bytes = encode_f32(&[1], &[0.0]);
        let at = bytes.windows(3).position(|w| w == b"<f4").unwrap();
        bytes[at + 1] = b'i';
        let err = decode_float(&bytes).unwrap_err().to_string();
        assert!(err.contains("<i4"), "{err}");
    }
}
