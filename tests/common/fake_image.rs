//! A fake appliance image for tests: a GPT disk image whose `TANDEM-ESP` partition is
//! a FAT volume with one slot (`tandem/a`: kernel, initramfs, version) and its loader
//! entry. Shared by the unit tests of `src/image.rs` and the integration tests
//! (`tests/image_api.rs`) through `#[path]`.

#![allow(dead_code)]

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// The ESP's partition name (`image::ESP_PARTITION_NAME`).
pub const ESP_PARTITION_NAME: &str = "TANDEM-ESP";

/// A GPT header (92 bytes) for 128 entries of 128 bytes at LBA 2, with its CRCs.
fn gpt_header(entries: &[u8]) -> [u8; 92] {
    let mut hdr = [0u8; 92];
    hdr[..8].copy_from_slice(b"EFI PART");
    hdr[12..16].copy_from_slice(&92u32.to_le_bytes());
    hdr[72..80].copy_from_slice(&2u64.to_le_bytes());
    hdr[80..84].copy_from_slice(&128u32.to_le_bytes());
    hdr[84..88].copy_from_slice(&128u32.to_le_bytes());
    hdr[88..92].copy_from_slice(&crc32fast::hash(entries).to_le_bytes());
    let crc = crc32fast::hash(&hdr);
    hdr[16..20].copy_from_slice(&crc.to_le_bytes());
    hdr
}

/// Writes the fake image to `path`: slot `a` holds `kernel` and `initrd`, version
/// `tandem 9.9.9`.
pub fn fake_image(path: &Path, kernel: &[u8], initrd: &[u8]) {
    const ESP_START: u64 = 2048 * 512;
    const ESP_LEN: u64 = 8 * 1024 * 1024;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    f.set_len(ESP_START + ESP_LEN + 64 * 512).unwrap();
    let mut entries = vec![0u8; 128 * 128];
    let e = &mut entries[..128];
    e[..16].copy_from_slice(&[0x28; 16]);
    e[32..40].copy_from_slice(&(ESP_START / 512).to_le_bytes());
    e[40..48].copy_from_slice(&((ESP_START + ESP_LEN) / 512 - 1).to_le_bytes());
    for (i, c) in ESP_PARTITION_NAME.encode_utf16().enumerate() {
        e[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
    }
    f.seek(SeekFrom::Start(512)).unwrap();
    f.write_all(&gpt_header(&entries)).unwrap();
    f.seek(SeekFrom::Start(1024)).unwrap();
    f.write_all(&entries).unwrap();
    let mut part = fscommon_slice(f, ESP_START, ESP_LEN);
    fatfs::format_volume(&mut part, fatfs::FormatVolumeOptions::new()).unwrap();
    let fs = fatfs::FileSystem::new(part, fatfs::FsOptions::new()).unwrap();
    let root = fs.root_dir();
    for d in ["loader", "loader/entries", "tandem", "tandem/a"] {
        root.create_dir(d).unwrap();
    }
    let put = |p: &str, b: &[u8]| root.create_file(p).unwrap().write_all(b).unwrap();
    put("tandem/a/vmlinuz", kernel);
    put("tandem/a/initrd.img", initrd);
    put("tandem/a/version", b"tandem 9.9.9\n");
    put(
        "loader/entries/tandem-1-a.conf",
        b"title t\nlinux /tandem/a/vmlinuz\noptions console=ttyS0 panic=10 tandem.slot=a\n",
    );
}

/// A writable partition view for building the fake image.
struct RwSlice {
    file: fs::File,
    start: u64,
    len: u64,
    pos: u64,
}
fn fscommon_slice(file: fs::File, start: u64, len: u64) -> RwSlice {
    RwSlice {
        file,
        start,
        len,
        pos: 0,
    }
}
impl Read for RwSlice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min((self.len - self.pos) as usize);
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.file.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}
impl Write for RwSlice {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min((self.len - self.pos) as usize);
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let put = self.file.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
impl Seek for RwSlice {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::End(d) => self.len.checked_add_signed(d).unwrap(),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).unwrap(),
        };
        Ok(self.pos)
    }
}
