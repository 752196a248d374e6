//! The appliance image's A/B boot slots (see `image/`): the ESP holds two slots
//! (`/tandem/a`, `/tandem/b`: `vmlinuz` + `initrd.img`) and one systemd-boot loader
//! entry per slot, `loader/entries/tandem-<generation>-<slot>[+LEFT[-DONE]].conf`.
//!
//! The entry file names are the whole boot state, for both firmwares:
//! - UEFI: systemd-boot counts tries itself (renames `+3` to `+2-1` before booting) and
//!   boots the first entry of its order: entries with no tries left last, then the
//!   highest generation. [`select`] models that order.
//! - Legacy BIOS: SYSLINUX cannot count, so the init runs [`boot_check`], which does the
//!   same rename for the booted slot and rewrites `syslinux.cfg` so that its `DEFAULT`
//!   is what [`select`] picks now: a slot out of tries falls back to the other one.
//!
//! [`bless`] marks the running slot good (drops the counter) once the daemon is
//! healthy; [`update`] writes the inactive slot from a new image file and puts it on
//! trial with [`TRIES`] tries ([`install_signed`] only with a trusted signature);
//! [`default_config`] is the first-boot configuration. [`job`] runs an update the API
//! asked for; [`console`] keeps the console password.

pub mod console;
pub mod job;
pub mod sign;

use std::fmt;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Tries a freshly written slot gets before it is abandoned.
pub const TRIES: u32 = 3;
/// Partition name of the ESP in the image's GPT (also the FAT volume label).
pub const ESP_PARTITION_NAME: &str = "TANDEM-ESP";
/// Where the running appliance mounts the ESP.
pub const DEFAULT_ESP: &str = "/boot/efi";

/// What can go wrong with the boot slots.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}: not a disk image with a GPT")]
    NoGpt(PathBuf),
    #[error("{path}: the GPT {part} fail their CRC32: a damaged or cut-off image")]
    GptCrc { path: PathBuf, part: &'static str },
    #[error("{0}: no `{ESP_PARTITION_NAME}` partition in the GPT")]
    NoEsp(PathBuf),
    #[error("{path}: not a usable zstd-compressed image: {why}")]
    Compressed { path: PathBuf, why: String },
    #[error("{path}: cannot read the FAT file system: {source}")]
    Fat { path: PathBuf, source: io::Error },
    #[error("no loader entry in {0}")]
    NoEntry(PathBuf),
    #[error("no loader entry for the running slot {slot} in {dir}")]
    NoSlotEntry { slot: Slot, dir: PathBuf },
    #[error("cannot tell the running slot: no `tandem.slot=` on the kernel command line")]
    UnknownSlot,
    #[error(transparent)]
    Sign(#[from] sign::SignError),
    #[error("slot {0} is out of tries (it failed to boot): no rollback to it")]
    BadSlot(Slot),
    #[error("the daemon did not become healthy within {0} s: {1}")]
    Unhealthy(u64, String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One of the two boot slots.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" | "A" => Some(Slot::A),
            "b" | "B" => Some(Slot::B),
            _ => None,
        }
    }
    /// The slot named by `tandem.slot=` in a kernel command line.
    pub fn from_cmdline(cmdline: &str) -> Option<Slot> {
        cmdline
            .split_whitespace()
            .find_map(|a| a.strip_prefix("tandem.slot="))
            .and_then(Slot::parse)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A loader entry, from its file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub slot: Slot,
    pub generation: u64,
    /// `None`: blessed (no counter). `Some(n)`: on trial with n tries left.
    pub tries_left: Option<u32>,
    pub tries_done: u32,
}

impl Entry {
    /// Parses `tandem-<gen>-<slot>[+LEFT[-DONE]].conf`.
    pub fn parse(file_name: &str) -> Option<Entry> {
        let stem = file_name.strip_suffix(".conf")?;
        let rest = stem.strip_prefix("tandem-")?;
        let (id, counter) = match rest.split_once('+') {
            Some((id, c)) => (id, Some(c)),
            None => (rest, None),
        };
        let (generation, slot) = id.split_once('-')?;
        let generation = generation.parse().ok()?;
        let slot = Slot::parse(slot)?;
        let (tries_left, tries_done) = match counter {
            None => (None, 0),
            Some(c) => {
                let (l, d) = c.split_once('-').unwrap_or((c, "0"));
                (Some(l.parse().ok()?), d.parse().ok()?)
            }
        };
        Some(Entry {
            slot,
            generation,
            tries_left,
            tries_done,
        })
    }

    pub fn file_name(&self) -> String {
        let id = format!("tandem-{}-{}", self.generation, self.slot);
        match self.tries_left {
            None => format!("{id}.conf"),
            Some(l) if self.tries_done == 0 => format!("{id}+{l}.conf"),
            Some(l) => format!("{id}+{l}-{}.conf", self.tries_done),
        }
    }

    /// Out of tries: the boot loader only picks it when nothing else is left.
    pub fn is_bad(&self) -> bool {
        self.tries_left == Some(0)
    }

    /// The entry after one more counted boot attempt (blessed entries do not count).
    pub fn counted(&self) -> Entry {
        let mut e = self.clone();
        if let Some(l) = e.tries_left {
            if l > 0 {
                e.tries_left = Some(l - 1);
                e.tries_done += 1;
            }
        }
        e
    }

    pub fn blessed(&self) -> Entry {
        Entry {
            tries_left: None,
            tries_done: 0,
            ..self.clone()
        }
    }
}

/// The entry systemd-boot boots by default: entries out of tries go last, then the
/// highest generation (its version sort of the ids, newest first).
pub fn select(entries: &[Entry]) -> Option<&Entry> {
    entries
        .iter()
        .min_by_key(|e| (e.is_bad(), std::cmp::Reverse((e.generation, e.slot))))
}

/// The ESP of a running (or staged) appliance.
#[derive(Debug, Clone)]
pub struct Esp {
    pub root: PathBuf,
}

impl Esp {
    pub fn new(root: impl Into<PathBuf>) -> Esp {
        Esp { root: root.into() }
    }
    pub fn entries_dir(&self) -> PathBuf {
        self.root.join("loader/entries")
    }
    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.root.join("tandem").join(slot.name())
    }

    /// The tandem loader entries, with their options lines.
    pub fn entries(&self) -> Result<Vec<(Entry, String)>, ImageError> {
        let dir = self.entries_dir();
        let mut out = Vec::new();
        for de in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let de = de.map_err(io_err(&dir))?;
            let name = de.file_name().to_string_lossy().into_owned();
            if let Some(e) = Entry::parse(&name) {
                let text = fs::read_to_string(de.path()).map_err(io_err(&de.path()))?;
                out.push((e, options_of(&text)));
            }
        }
        out.sort_by_key(|(e, _)| (e.generation, e.slot));
        Ok(out)
    }

    fn rename(&self, from: &Entry, to: &Entry) -> Result<(), ImageError> {
        if from == to {
            return Ok(());
        }
        let src = self.entries_dir().join(from.file_name());
        fs::rename(&src, self.entries_dir().join(to.file_name())).map_err(io_err(&src))
    }

    /// Rewrites `syslinux.cfg` so legacy BIOS boots what systemd-boot would.
    pub fn sync_loader(&self) -> Result<Option<Slot>, ImageError> {
        let entries = self.entries()?;
        let only: Vec<Entry> = entries.iter().map(|(e, _)| e.clone()).collect();
        let path = self.root.join("syslinux.cfg");
        let text = render_syslinux(&entries);
        write_synced(&path, text.as_bytes())?;
        Ok(select(&only).map(|e| e.slot))
    }
}

fn options_of(entry_text: &str) -> String {
    entry_text
        .lines()
        .find_map(|l| l.trim().strip_prefix("options"))
        .map(|o| o.trim().to_string())
        .unwrap_or_default()
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// `syslinux.cfg` for the entries: one label per slot, `DEFAULT` = [`select`].
pub fn render_syslinux(entries: &[(Entry, String)]) -> String {
    let only: Vec<Entry> = entries.iter().map(|(e, _)| e.clone()).collect();
    let default = select(&only).map_or("a", |e| e.slot.name());
    let mut s = String::from(
        "# Written by `tandem image` from loader/entries: do not edit.\n\
         SERIAL 0 115200\nPROMPT 0\nTIMEOUT 0\n",
    );
    s.push_str(&format!("DEFAULT {default}\n"));
    for (e, options) in entries {
        s.push_str(&format!(
            "LABEL {slot}\n  LINUX /tandem/{slot}/vmlinuz\n  INITRD /tandem/{slot}/initrd.img\n  APPEND {options}\n",
            slot = e.slot
        ));
    }
    s
}

/// What [`boot_check`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootCheck {
    /// The running slot's entry after counting this boot.
    pub entry: Entry,
    /// The slot the next boot picks unless this one is blessed.
    pub next: Option<Slot>,
}

/// The firmware that booted us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Firmware {
    Uefi,
    Bios,
}

impl Firmware {
    pub fn detect() -> Firmware {
        if Path::new("/sys/firmware/efi").exists() {
            Firmware::Uefi
        } else {
            Firmware::Bios
        }
    }
}

/// Early in boot: on BIOS count this attempt (systemd-boot already did on UEFI), then
/// make `syslinux.cfg` boot what comes next.
pub fn boot_check(esp: &Esp, slot: Slot, firmware: Firmware) -> Result<BootCheck, ImageError> {
    let entries = esp.entries()?;
    let (current, _) = entries
        .iter()
        .find(|(e, _)| e.slot == slot)
        .ok_or_else(|| ImageError::NoSlotEntry {
            slot,
            dir: esp.entries_dir(),
        })?;
    let entry = match firmware {
        Firmware::Uefi => current.clone(),
        Firmware::Bios => {
            let counted = current.counted();
            esp.rename(current, &counted)?;
            counted
        }
    };
    let next = esp.sync_loader()?;
    Ok(BootCheck { entry, next })
}

/// Marks the running slot good: no counter on its entry, and `syslinux.cfg` boots it.
/// Returns the entry as it is now.
pub fn bless(esp: &Esp, slot: Slot) -> Result<Entry, ImageError> {
    let entries = esp.entries()?;
    let (current, _) = entries
        .iter()
        .find(|(e, _)| e.slot == slot)
        .ok_or_else(|| ImageError::NoSlotEntry {
            slot,
            dir: esp.entries_dir(),
        })?;
    let blessed = current.blessed();
    esp.rename(current, &blessed)?;
    esp.sync_loader()?;
    Ok(blessed)
}

/// Boots the other slot next (`tandem image rollback`): its entry gets a generation
/// above every other and keeps its state (a blessed slot stays blessed). Refused when
/// the other slot has no entry or is out of tries. Returns the entry as it is now.
pub fn rollback(esp: &Esp, running: Slot) -> Result<Entry, ImageError> {
    let target = running.other();
    let entries = esp.entries()?;
    let (other, _) = entries
        .iter()
        .find(|(e, _)| e.slot == target)
        .ok_or_else(|| ImageError::NoSlotEntry {
            slot: target,
            dir: esp.entries_dir(),
        })?;
    if other.is_bad() {
        return Err(ImageError::BadSlot(target));
    }
    let generation = entries.iter().map(|(e, _)| e.generation).max().unwrap_or(0) + 1;
    let next = Entry {
        generation,
        ..other.clone()
    };
    esp.rename(other, &next)?;
    esp.sync_loader()?;
    Ok(next)
}

/// The version a slot holds (`tandem --version` of its build), if it says.
pub fn slot_version(esp: &Esp, slot: Slot) -> Option<String> {
    let text = fs::read_to_string(esp.slot_dir(slot).join(VERSION_FILE)).ok()?;
    text.lines().next().map(|l| l.trim().to_string())
}

/// The result of [`update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated {
    pub slot: Slot,
    pub entry: Entry,
    pub bytes: u64,
}

/// Writes the slot that is not `running` from a raw disk image (`tandem.img`): the
/// kernel and initramfs of the image's own default slot, then a new entry on trial
/// with [`TRIES`] tries and a generation above every other, so both boot loaders try
/// it next.
pub fn update(esp: &Esp, image: &Path, running: Slot) -> Result<Updated, ImageError> {
    let target = running.other();
    let fat = open_image_esp(image)?;
    let fat_err = |source: io::Error| ImageError::Fat {
        path: image.to_path_buf(),
        source,
    };
    // The image's default entry says which of its slots to take, and its options.
    let mut image_entries = Vec::new();
    {
        let root = fat.root_dir();
        let dir = root.open_dir("loader/entries").map_err(fat_err)?;
        for de in dir.iter() {
            let de = de.map_err(fat_err)?;
            if let Some(e) = Entry::parse(&de.file_name()) {
                let mut text = String::new();
                de.to_file().read_to_string(&mut text).map_err(fat_err)?;
                image_entries.push((e, options_of(&text)));
            }
        }
    }
    let only: Vec<Entry> = image_entries.iter().map(|(e, _)| e.clone()).collect();
    let source = select(&only)
        .cloned()
        .ok_or_else(|| ImageError::NoEntry(image.to_path_buf()))?;
    let options = image_entries
        .iter()
        .find(|(e, _)| *e == source)
        .map(|(_, o)| retarget_options(o, target))
        .unwrap_or_default();

    let dir = esp.slot_dir(target);
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    // Take the target out of the boot order first: a half-written slot never boots.
    let mine = esp.entries()?;
    for (e, _) in mine.iter().filter(|(e, _)| e.slot == target) {
        let p = esp.entries_dir().join(e.file_name());
        fs::remove_file(&p).map_err(io_err(&p))?;
    }
    let mut bytes = 0;
    for name in ["vmlinuz", "initrd.img"] {
        let src = format!("tandem/{}/{name}", source.slot);
        let mut f = fat.root_dir().open_file(&src).map_err(fat_err)?;
        let dst = dir.join(name);
        let tmp = dir.join(format!("{name}.new"));
        let mut out = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        bytes += io::copy(&mut f, &mut out).map_err(io_err(&tmp))?;
        out.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    }
    // The version file is optional (older images have none): a stale one must go.
    let version = dir.join(VERSION_FILE);
    match fat
        .root_dir()
        .open_file(&format!("tandem/{}/{VERSION_FILE}", source.slot))
    {
        Ok(mut f) => {
            let mut text = Vec::new();
            f.read_to_end(&mut text).map_err(fat_err)?;
            write_synced(&version, &text)?;
        }
        Err(_) => match fs::remove_file(&version) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&version)(e)),
            _ => {}
        },
    }
    drop(fat);
    let generation = mine.iter().map(|(e, _)| e.generation).max().unwrap_or(0) + 1;
    let entry = Entry {
        slot: target,
        generation,
        tries_left: Some(TRIES),
        tries_done: 0,
    };
    let text = format!(
        "title Tandem (slot {target}, generation {generation})\n\
         linux /tandem/{target}/vmlinuz\ninitrd /tandem/{target}/initrd.img\noptions {options}\n"
    );
    write_synced(&esp.entries_dir().join(entry.file_name()), text.as_bytes())?;
    esp.sync_loader()?;
    Ok(Updated {
        slot: target,
        entry,
        bytes,
    })
}

/// `tandem image update` from the command line and through the API: checks that
/// `image` carries a valid signature (`IMAGE.sig`) by a key in `trusted_keys`, tells
/// `verified` which key signed it, then writes the slot that is not `running`
/// ([`update`]). Nothing is written when the signature does not hold.
pub fn install_signed(
    esp: &Esp,
    image: &Path,
    running: Slot,
    trusted_keys: &Path,
    verified: impl FnOnce(&ed25519_dalek::VerifyingKey),
) -> Result<Updated, ImageError> {
    let keys = sign::trusted_keys(trusted_keys)?;
    verified(&sign::verify(image, &keys)?);
    update(esp, image, running)
}

/// Kernel options for `slot`: `tandem.slot=` replaced (or added).
pub fn retarget_options(options: &str, slot: Slot) -> String {
    let mut out: Vec<String> = options
        .split_whitespace()
        .filter(|a| !a.starts_with("tandem.slot="))
        .map(str::to_string)
        .collect();
    out.push(format!("tandem.slot={slot}"));
    out.join(" ")
}

/// The update's ESP for the FAT reader: a byte range of a raw image, or the
/// partition decompressed into memory from a zstd-compressed image.
enum EspImage {
    Raw(Partition),
    Unpacked(io::Cursor<Vec<u8>>),
}

impl Read for EspImage {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            EspImage::Raw(p) => p.read(buf),
            EspImage::Unpacked(c) => c.read(buf),
        }
    }
}

impl Write for EspImage {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the update image is read only",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for EspImage {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        match self {
            EspImage::Raw(p) => p.seek(to),
            EspImage::Unpacked(c) => c.seek(to),
        }
    }
}

/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// How much of a compressed image is decompressed to find its GPT; the ESP must
/// start after it.
const GPT_PREFIX: u64 = 64 << 10;
/// The largest ESP a compressed update may carry (it is unpacked into memory).
const MAX_UNPACKED_ESP: u64 = 512 << 20;

/// The ESP of a zstd-compressed image (`tandem.img.zst`, as distributed), unpacked
/// into memory: the stream is decoded once, front to back, keeping only the GPT and
/// the ESP.
fn unpack_compressed_esp(image: &Path) -> Result<Vec<u8>, ImageError> {
    let file = fs::File::open(image).map_err(io_err(image))?;
    let bad = |why: String| ImageError::Compressed {
        path: image.to_path_buf(),
        why,
    };
    let mut z = ruzstd::decoding::StreamingDecoder::new(io::BufReader::new(file))
        .map_err(|e| bad(e.to_string()))?;
    let mut prefix = vec![0u8; GPT_PREFIX as usize];
    z.read_exact(&mut prefix)
        .map_err(|e| bad(format!("the first {GPT_PREFIX} bytes: {e}")))?;
    let esp = parse_gpt(&mut io::Cursor::new(&prefix), image)?
        .into_iter()
        .find(|p| p.name == ESP_PARTITION_NAME)
        .ok_or_else(|| ImageError::NoEsp(image.to_path_buf()))?;
    if esp.start < GPT_PREFIX || esp.len > MAX_UNPACKED_ESP {
        return Err(bad(format!(
            "the ESP at {} ({} bytes) is not where an update can carry it",
            esp.start, esp.len
        )));
    }
    let skip = esp.start - GPT_PREFIX;
    let skipped =
        io::copy(&mut (&mut z).take(skip), &mut io::sink()).map_err(|e| bad(e.to_string()))?;
    let mut data = Vec::with_capacity(esp.len as usize);
    (&mut z)
        .take(esp.len)
        .read_to_end(&mut data)
        .map_err(|e| bad(e.to_string()))?;
    if skipped != skip || data.len() as u64 != esp.len {
        return Err(bad("truncated before the end of the ESP".into()));
    }
    Ok(data)
}

/// A byte range of a file (one partition), for the FAT reader.
struct Partition {
    file: fs::File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Partition {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let got = self.file.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Seek for Partition {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad seek"))?;
        Ok(self.pos)
    }
}

/// A GPT partition: name and byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    pub name: String,
    pub start: u64,
    pub len: u64,
}

/// The partitions of a GPT disk image with 512-byte sectors.
pub fn read_gpt(image: &Path) -> Result<Vec<GptPartition>, ImageError> {
    let mut f = fs::File::open(image).map_err(io_err(image))?;
    parse_gpt(&mut f, image)
}

/// The GPT of the disk in `f` (`image` names it in errors): the header and the entry
/// array are taken only when their CRC32s match (UEFI 2.10 s5.3.2), so a damaged or
/// truncated download is refused before anything is read from its partitions.
pub fn parse_gpt<R: Read + Seek>(f: &mut R, image: &Path) -> Result<Vec<GptPartition>, ImageError> {
    let no_gpt = || ImageError::NoGpt(image.to_path_buf());
    let crc = |part: &'static str| ImageError::GptCrc {
        path: image.to_path_buf(),
        part,
    };
    let mut hdr = [0u8; 512];
    f.seek(SeekFrom::Start(512)).map_err(io_err(image))?;
    f.read_exact(&mut hdr).map_err(|_| no_gpt())?;
    if &hdr[..8] != b"EFI PART" {
        return Err(no_gpt());
    }
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
    let header_size = u32_at(&hdr, 12) as usize;
    if !(92..=512).contains(&header_size) {
        return Err(no_gpt());
    }
    let mut zeroed = hdr[..header_size].to_vec();
    zeroed[16..20].fill(0);
    if crc32fast::hash(&zeroed) != u32_at(&hdr, 16) {
        return Err(crc("header"));
    }
    let table = u64_at(&hdr, 72).checked_mul(512).ok_or_else(no_gpt)?;
    let count = u32_at(&hdr, 80) as usize;
    let size = u32_at(&hdr, 84) as usize;
    if !(128..=4096).contains(&size) || count > 1024 {
        return Err(no_gpt());
    }
    let mut raw = vec![0u8; count * size];
    f.seek(SeekFrom::Start(table)).map_err(io_err(image))?;
    f.read_exact(&mut raw).map_err(|_| no_gpt())?;
    if crc32fast::hash(&raw) != u32_at(&hdr, 88) {
        return Err(crc("partition entries"));
    }
    let mut parts = Vec::new();
    for e in raw.chunks(size) {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (u64_at(e, 32), u64_at(e, 40));
        let name: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        parts.push(GptPartition {
            name: String::from_utf16_lossy(&name),
            start: first.saturating_mul(512),
            len: last
                .saturating_add(1)
                .saturating_sub(first)
                .saturating_mul(512),
        });
    }
    Ok(parts)
}

fn open_image_esp(image: &Path) -> Result<fatfs::FileSystem<EspImage>, ImageError> {
    let mut magic = [0u8; 4];
    let compressed = fs::File::open(image)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == ZSTD_MAGIC;
    let source = if compressed {
        EspImage::Unpacked(io::Cursor::new(unpack_compressed_esp(image)?))
    } else {
        EspImage::Raw(raw_esp(image)?)
    };
    fatfs::FileSystem::new(source, fatfs::FsOptions::new()).map_err(|source| ImageError::Fat {
        path: image.to_path_buf(),
        source,
    })
}

fn raw_esp(image: &Path) -> Result<Partition, ImageError> {
    let esp = read_gpt(image)?
        .into_iter()
        .find(|p| p.name == ESP_PARTITION_NAME)
        .ok_or_else(|| ImageError::NoEsp(image.to_path_buf()))?;
    let file = fs::File::open(image).map_err(io_err(image))?;
    Ok(Partition {
        file,
        start: esp.start,
        len: esp.len,
        pos: 0,
    })
}

/// A slot's version file on the ESP (and in an image's slots).
const VERSION_FILE: &str = "version";

/// The one-node configuration a node boots with when the data partition has no
/// `tandem.toml`: heartbeats on `address` (the first NIC's), metrics and the web
/// console (HTTPS, a self-signed certificate) on that address only, no groups, and no SNMP access until one is configured (a commented
/// community shows how): nothing answers `public` from the networks around it.
pub fn default_config(node: &str, address: std::net::IpAddr, key: &str) -> String {
    let node = node.replace(['"', '\\'], "");
    let metrics = std::net::SocketAddr::new(address, 9776);
    let console = std::net::SocketAddr::new(address, 9443);
    let mut s = format!(
        "# Written at boot because /data/tandem.toml is missing: a one-node default.\n\
         [cluster]\nname = \"tandem\"\nkey = \"{key}\"\nstate_dir = \"/data/state\"\n\
         # A mirror's metadata goes at the end of its own disk (README \"Internal metadata\");\n\
         # `metadata = \"external\"` on a [[mirror]] keeps it in state_dir instead.\n\
         mirror_metadata = \"internal\"\n\n\
         [heartbeat]\npaths = [\"lan\"]\n\n\
         [metrics]\nlisten = \"{metrics}\"\n\n\
         [console]\nlisten = \"{console}\"\n"
    );
    s.push_str(SNMP_TEMPLATE);
    s.push_str(&format!(
        "\n[[node]]\nname = \"{node}\"\npriority = 1\naddresses = {{ lan = \"{address}\" }}\n"
    ));
    // The data partition is 64 MiB: a mirror keeps its metadata on its own disk
    // (`mirror_metadata = "internal"` above).
    s.push_str(APPLIANCE_MIRROR_TEMPLATE);
    s
}

/// The commented `[snmp]` of [`default_config`]: no community or user is made up.
const SNMP_TEMPLATE: &str =
    "\n# The SNMP agent answers nobody until you say who (README \"SNMP\"):\n\
     # [snmp]\n\
     # listen = \"0.0.0.0:161\"\n\
     # [[snmp.community]]\n\
     # name = \"a-long-random-community\"\n\
     # source = \"192.0.2.0/24\"           # your management network only\n";

/// The commented `[[mirror]]` of [`default_config`]: on the appliance, metadata is
/// internal (at the end of the mirror's disk, from `[cluster] mirror_metadata`), so the
/// data partition keeps only the config, small state and logs.
const APPLIANCE_MIRROR_TEMPLATE: &str =
    "\n# A replicated volume: uncomment and fill in (README \"Block mirror\").\n\
     # [[mirror]]\n\
     # name = \"data\"\n\
     # backing = \"/dev/sdb\"          # a disk of its own, the same on every node\n\
     #                               # (its metadata at its end: mirror_metadata above)\n\
     # addresses = { n1 = \"10.0.1.1:7790\", n2 = \"10.0.1.2:7790\" }\n\
     # [[mirror.link]]\n\
     # between = [\"n1\", \"n2\"]\n";

/// The running slot, from `/proc/cmdline`.
pub fn running_slot() -> Result<Slot, ImageError> {
    let p = Path::new("/proc/cmdline");
    let cmdline = fs::read_to_string(p).map_err(io_err(p))?;
    Slot::from_cmdline(&cmdline).ok_or(ImageError::UnknownSlot)
}

/// Healthy = the daemon is up and its API answers a status request. Polls until
/// then or until `timeout`.
pub async fn wait_healthy(
    ep: &crate::api::client::Endpoint,
    timeout: std::time::Duration,
) -> Result<(), ImageError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let r: Result<crate::status::Status, _> =
            crate::api::client::call(ep, "GET", "/v1/status", None).await;
        match r {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(ImageError::Unhealthy(timeout.as_secs(), e.to_string()))
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    }
}

/// Human-readable state of the slots: generation, boot state, version, which one runs
/// (`running`) and which one boots next.
pub fn describe(esp: &Esp, running: Option<Slot>) -> Result<String, ImageError> {
    let entries = esp.entries()?;
    let only: Vec<Entry> = entries.iter().map(|(e, _)| e.clone()).collect();
    let next = select(&only).map(|e| e.slot);
    let mut s = String::new();
    for (e, _) in &entries {
        let state = match e.tries_left {
            None => "good".to_string(),
            Some(0) => format!("BAD (no tries left, {} done)", e.tries_done),
            Some(l) => format!("on trial ({l} tries left, {} done)", e.tries_done),
        };
        let version = slot_version(esp, e.slot).unwrap_or_else(|| "version unknown".into());
        let marks: Vec<&str> = [
            (Some(e.slot) == running, "running"),
            (Some(e.slot) == next, "boots next"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, m)| *m)
        .collect();
        s.push_str(&format!(
            "slot {}  generation {:<4} {:<32} {version}{}\n",
            e.slot,
            e.generation,
            state,
            if marks.is_empty() {
                String::new()
            } else {
                format!("  <- {}", marks.join(", "))
            }
        ));
    }
    Ok(s)
}

/// The fake image the integration tests use too.
#[cfg(test)]
#[path = "../tests/common/fake_image.rs"]
mod fake_image;

#[cfg(test)]
mod tests {
    use super::fake_image::fake_image;
    use super::*;

    fn staged_esp(names: &[&str]) -> (tempfile::TempDir, Esp) {
        let dir = tempfile::tempdir().unwrap();
        let esp = Esp::new(dir.path());
        fs::create_dir_all(esp.entries_dir()).unwrap();
        for n in names {
            let e = Entry::parse(n).unwrap();
            fs::create_dir_all(esp.slot_dir(e.slot)).unwrap();
            fs::write(
                esp.entries_dir().join(n),
                format!("title x\noptions console=ttyS0 tandem.slot={}\n", e.slot),
            )
            .unwrap();
        }
        (dir, esp)
    }

    fn names(esp: &Esp) -> Vec<String> {
        esp.entries()
            .unwrap()
            .iter()
            .map(|(e, _)| e.file_name())
            .collect()
    }

    #[test]
    fn entry_names_round_trip() {
        for n in [
            "tandem-1-a.conf",
            "tandem-2-b+3.conf",
            "tandem-12-a+2-1.conf",
            "tandem-2-b+0-3.conf",
        ] {
            assert_eq!(Entry::parse(n).unwrap().file_name(), n);
        }
        assert_eq!(Entry::parse("other.conf"), None);
        assert_eq!(Entry::parse("tandem-x-a.conf"), None);
        assert_eq!(Entry::parse("tandem-1-c.conf"), None);
        let e = Entry::parse("tandem-2-b+1.conf").unwrap().counted();
        assert_eq!(e.file_name(), "tandem-2-b+0-1.conf");
        assert!(e.is_bad());
        assert_eq!(e.counted(), e, "a bad entry does not count below zero");
        assert_eq!(e.blessed().file_name(), "tandem-2-b.conf");
    }

    #[test]
    fn select_prefers_newest_with_tries_left() {
        let p = |n: &str| Entry::parse(n).unwrap();
        let es = [p("tandem-1-a.conf"), p("tandem-2-b+3.conf")];
        assert_eq!(select(&es).unwrap().slot, Slot::B);
        let es = [p("tandem-1-a.conf"), p("tandem-2-b+0-3.conf")];
        assert_eq!(
            select(&es).unwrap().slot,
            Slot::A,
            "out of tries: fall back"
        );
        let es = [p("tandem-3-a+1.conf"), p("tandem-2-b.conf")];
        assert_eq!(select(&es).unwrap().slot, Slot::A);
        let es = [p("tandem-2-b+0-3.conf")];
        assert_eq!(
            select(&es).unwrap().slot,
            Slot::B,
            "the only one still boots"
        );
        assert_eq!(select(&[]), None);
    }

    #[test]
    fn bios_boot_check_counts_and_falls_back() {
        let (_d, esp) = staged_esp(&["tandem-1-a.conf", "tandem-2-b+2.conf"]);
        let c = boot_check(&esp, Slot::B, Firmware::Bios).unwrap();
        assert_eq!(c.entry.file_name(), "tandem-2-b+1-1.conf");
        assert_eq!(c.next, Some(Slot::B));
        let cfg = fs::read_to_string(esp.root.join("syslinux.cfg")).unwrap();
        assert!(cfg.contains("DEFAULT b\n"), "{cfg}");
        assert!(
            cfg.contains("APPEND console=ttyS0 tandem.slot=a\n"),
            "{cfg}"
        );
        // Second failed attempt: out of tries, the next boot is slot A.
        let c = boot_check(&esp, Slot::B, Firmware::Bios).unwrap();
        assert_eq!(c.entry.file_name(), "tandem-2-b+0-2.conf");
        assert_eq!(c.next, Some(Slot::A));
        let cfg = fs::read_to_string(esp.root.join("syslinux.cfg")).unwrap();
        assert!(cfg.contains("DEFAULT a\n"), "{cfg}");
        // Slot A is blessed: booting it changes no counter.
        let c = boot_check(&esp, Slot::A, Firmware::Bios).unwrap();
        assert_eq!(c.entry.file_name(), "tandem-1-a.conf");
        assert_eq!(names(&esp), ["tandem-1-a.conf", "tandem-2-b+0-2.conf"]);
    }

    #[test]
    fn uefi_boot_check_leaves_counting_to_systemd_boot() {
        let (_d, esp) = staged_esp(&["tandem-1-a.conf", "tandem-2-b+2-1.conf"]);
        let c = boot_check(&esp, Slot::B, Firmware::Uefi).unwrap();
        assert_eq!(c.entry.file_name(), "tandem-2-b+2-1.conf");
        assert_eq!(names(&esp), ["tandem-1-a.conf", "tandem-2-b+2-1.conf"]);
        assert!(matches!(
            boot_check(&esp, Slot::A, Firmware::Uefi),
            Ok(BootCheck {
                next: Some(Slot::B),
                ..
            })
        ));
    }

    #[test]
    fn bless_drops_the_counter() {
        let (_d, esp) = staged_esp(&["tandem-1-a.conf", "tandem-2-b+1-2.conf"]);
        assert_eq!(bless(&esp, Slot::B).unwrap().file_name(), "tandem-2-b.conf");
        assert_eq!(names(&esp), ["tandem-1-a.conf", "tandem-2-b.conf"]);
        let cfg = fs::read_to_string(esp.root.join("syslinux.cfg")).unwrap();
        assert!(cfg.contains("DEFAULT b\n"));
        // Idempotent.
        assert_eq!(bless(&esp, Slot::B).unwrap().file_name(), "tandem-2-b.conf");
        assert!(matches!(
            bless(&Esp::new(esp.root.join("nope")), Slot::A),
            Err(ImageError::Io { .. })
        ));
        let (_d2, only_a) = staged_esp(&["tandem-1-a.conf"]);
        assert!(matches!(
            bless(&only_a, Slot::B),
            Err(ImageError::NoSlotEntry { slot: Slot::B, .. })
        ));
    }

    #[test]
    fn slot_from_cmdline_and_options() {
        assert_eq!(
            Slot::from_cmdline("console=ttyS0 tandem.slot=b quiet"),
            Some(Slot::B)
        );
        assert_eq!(Slot::from_cmdline("console=ttyS0"), None);
        assert_eq!(
            retarget_options("console=ttyS0 tandem.slot=a panic=10", Slot::B),
            "console=ttyS0 panic=10 tandem.slot=b"
        );
    }

    #[test]
    fn default_config_is_valid() {
        let addr = std::net::IpAddr::from([10, 0, 2, 15]);
        let text = default_config("node-1", addr, &crate::config::init::random_key());
        let cfg = crate::config::Config::parse(&text).expect("the daemon accepts it");
        assert_eq!(cfg.nodes.len(), 1);
        assert_eq!(cfg.nodes[0].name, "node-1");
        assert!(cfg.groups.is_empty());
        // Safe defaults: metrics on the node's own address, no SNMP access at all.
        assert_eq!(
            cfg.metrics.unwrap().listen,
            std::net::SocketAddr::new(addr, 9776)
        );
        assert_eq!(
            cfg.console.unwrap().listen,
            std::net::SocketAddr::new(addr, 9443)
        );
        assert!(cfg.snmp.is_none(), "{text}");
        assert!(!text.contains("public"), "{text}");
        assert_eq!(
            cfg.cluster.mirror_metadata,
            crate::config::MetadataKind::Internal,
            "the appliance default: {text}"
        );
        assert!(text.contains("mirror_metadata above"), "{text}");
        assert_eq!(cfg.nodes[0].addresses["lan"], addr);
    }

    #[test]
    fn update_takes_the_compressed_image_as_distributed() {
        let (dir, esp) = staged_esp(&["tandem-1-a.conf"]);
        let img = dir.path().join("new.img");
        let kernel: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
        fake_image(&img, &kernel, b"packed initrd");
        let raw = fs::read(&img).unwrap();
        let zst = dir.path().join("new.img.zst");
        fs::write(
            &zst,
            ruzstd::encoding::compress_to_vec(
                &raw[..],
                ruzstd::encoding::CompressionLevel::Fastest,
            ),
        )
        .unwrap();
        let u = update(&esp, &zst, Slot::A).unwrap();
        assert_eq!(u.slot, Slot::B);
        assert_eq!(
            fs::read(esp.slot_dir(Slot::B).join("vmlinuz")).unwrap(),
            kernel
        );
        assert_eq!(
            fs::read(esp.slot_dir(Slot::B).join("initrd.img")).unwrap(),
            b"packed initrd"
        );
        // A cut-off download is refused, and the slot on trial is left alone.
        let cut = dir.path().join("cut.img.zst");
        let z = fs::read(&zst).unwrap();
        fs::write(&cut, &z[..z.len() / 2]).unwrap();
        let before = names(&esp);
        let e = update(&esp, &cut, Slot::A).unwrap_err();
        assert!(matches!(e, ImageError::Compressed { .. }), "{e}");
        assert_eq!(names(&esp), before);
    }

    #[test]
    fn rollback_boots_the_other_slot_unless_it_failed() {
        let (_dir, esp) = staged_esp(&["tandem-1-a.conf", "tandem-2-b.conf"]);
        let e = rollback(&esp, Slot::B).unwrap();
        assert_eq!(e.file_name(), "tandem-3-a.conf", "blessed stays blessed");
        assert_eq!(names(&esp), ["tandem-2-b.conf", "tandem-3-a.conf"]);
        let cfg = fs::read_to_string(esp.root.join("syslinux.cfg")).unwrap();
        assert!(cfg.contains("DEFAULT a\n"), "{cfg}");
        assert_eq!(
            rollback(&esp, Slot::A).unwrap().file_name(),
            "tandem-4-b.conf"
        );

        let (_dir, esp) = staged_esp(&["tandem-1-a+0-3.conf", "tandem-2-b.conf"]);
        assert!(matches!(
            rollback(&esp, Slot::B),
            Err(ImageError::BadSlot(Slot::A))
        ));
        let (_dir, esp) = staged_esp(&["tandem-1-a.conf"]);
        assert!(matches!(
            rollback(&esp, Slot::A),
            Err(ImageError::NoSlotEntry { slot: Slot::B, .. })
        ));
    }

    #[test]
    fn update_writes_the_inactive_slot_and_puts_it_on_trial() {
        let (dir, esp) = staged_esp(&["tandem-1-a.conf", "tandem-1-b+0-3.conf"]);
        let img = dir.path().join("new.img");
        let kernel = vec![0x5a; 300_000];
        fake_image(&img, &kernel, b"new initrd");
        assert_eq!(read_gpt(&img).unwrap()[0].name, ESP_PARTITION_NAME);

        let u = update(&esp, &img, Slot::A).unwrap();
        assert_eq!(u.slot, Slot::B);
        assert_eq!(u.entry.file_name(), "tandem-2-b+3.conf");
        assert_eq!(u.bytes, 300_000 + 10);
        assert_eq!(
            fs::read(esp.slot_dir(Slot::B).join("vmlinuz")).unwrap(),
            kernel
        );
        assert_eq!(
            fs::read(esp.slot_dir(Slot::B).join("initrd.img")).unwrap(),
            b"new initrd"
        );
        assert_eq!(names(&esp), ["tandem-1-a.conf", "tandem-2-b+3.conf"]);
        let entries = esp.entries().unwrap();
        assert_eq!(entries[1].1, "console=ttyS0 panic=10 tandem.slot=b");
        let cfg = fs::read_to_string(esp.root.join("syslinux.cfg")).unwrap();
        assert!(cfg.contains("DEFAULT b\n"), "{cfg}");
        assert_eq!(slot_version(&esp, Slot::B).as_deref(), Some("tandem 9.9.9"));
        let said = describe(&esp, Some(Slot::A)).unwrap();
        assert!(said.contains("slot b  generation 2"), "{said}");
        assert!(said.contains("tandem 9.9.9  <- boots next"), "{said}");
        assert!(said.contains("version unknown  <- running"), "{said}");

        // Running B after it was blessed, the next update goes to A, generation 3.
        bless(&esp, Slot::B).unwrap();
        let u = update(&esp, &img, Slot::B).unwrap();
        assert_eq!(u.entry.file_name(), "tandem-3-a+3.conf");
        assert_eq!(names(&esp), ["tandem-2-b.conf", "tandem-3-a+3.conf"]);
    }

    #[test]
    fn a_gpt_with_a_wrong_crc_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("new.img");
        fake_image(&img, b"kernel", b"initrd");
        assert_eq!(read_gpt(&img).unwrap().len(), 1);
        let flip = |offset: u64| {
            let mut f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&img)
                .unwrap();
            let mut b = [0u8; 1];
            f.seek(SeekFrom::Start(offset)).unwrap();
            f.read_exact(&mut b).unwrap();
            f.seek(SeekFrom::Start(offset)).unwrap();
            f.write_all(&[b[0] ^ 0x40]).unwrap();
        };
        // A byte of the ESP entry's name, then a byte of the header.
        flip(1024 + 60);
        assert!(matches!(
            read_gpt(&img),
            Err(ImageError::GptCrc {
                part: "partition entries",
                ..
            })
        ));
        flip(1024 + 60);
        flip(512 + 40);
        assert!(matches!(
            read_gpt(&img),
            Err(ImageError::GptCrc { part: "header", .. })
        ));
        let esp = Esp::new(dir.path().join("esp"));
        assert!(matches!(
            update(&esp, &img, Slot::A),
            Err(ImageError::GptCrc { .. })
        ));
    }

    #[test]
    fn update_rejects_what_is_not_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let esp = Esp::new(dir.path());
        let junk = dir.path().join("junk.img");
        fs::write(&junk, vec![0u8; 4096]).unwrap();
        assert!(matches!(
            update(&esp, &junk, Slot::A),
            Err(ImageError::NoGpt(_))
        ));
        assert!(matches!(
            update(&esp, &dir.path().join("missing.img"), Slot::A),
            Err(ImageError::Io { .. })
        ));
    }
}
