//! The mixed workload of the WAN compression row of `tandem bench mirror`: a mailbox
//! (RFC 5322 messages with headers, English-like bodies and quoted replies, from a
//! seeded generator) interleaved with incompressible data (attachments, archives), half
//! and half in 64 KiB pieces. Seeded, so every run writes the same bytes.

use std::io::Write;
use std::path::Path;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};

use super::{io, BenchError};

/// The size of each text or random piece.
const PIECE: usize = 64 << 10;

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "for",
    "is",
    "on",
    "that",
    "by",
    "this",
    "with",
    "you",
    "it",
    "not",
    "or",
    "be",
    "are",
    "from",
    "at",
    "as",
    "your",
    "all",
    "have",
    "new",
    "more",
    "an",
    "was",
    "we",
    "will",
    "can",
    "us",
    "about",
    "if",
    "my",
    "has",
    "but",
    "our",
    "one",
    "other",
    "do",
    "no",
    "time",
    "they",
    "he",
    "up",
    "may",
    "what",
    "which",
    "their",
    "news",
    "out",
    "use",
    "any",
    "there",
    "see",
    "only",
    "so",
    "his",
    "when",
    "contact",
    "here",
    "business",
    "who",
    "also",
    "now",
    "help",
    "get",
    "view",
    "first",
    "been",
    "would",
    "how",
    "were",
    "me",
    "services",
    "some",
    "these",
    "click",
    "its",
    "like",
    "service",
    "than",
    "find",
    "price",
    "date",
    "back",
    "top",
    "people",
    "had",
    "list",
    "name",
    "just",
    "over",
    "state",
    "year",
    "day",
    "into",
    "email",
    "two",
    "health",
    "world",
    "next",
    "used",
    "go",
    "work",
    "last",
    "most",
    "products",
    "music",
    "buy",
    "data",
    "make",
    "them",
    "should",
    "product",
    "system",
    "post",
    "her",
    "city",
    "add",
    "policy",
    "number",
    "such",
    "please",
    "available",
    "copyright",
    "support",
    "message",
    "after",
    "best",
    "software",
    "then",
    "jan",
    "good",
    "video",
    "well",
    "where",
    "info",
    "rights",
    "public",
    "books",
    "high",
    "school",
    "through",
    "each",
    "links",
    "she",
    "review",
    "years",
    "order",
    "very",
    "privacy",
    "book",
    "items",
    "company",
    "read",
    "group",
    "need",
    "many",
    "user",
    "said",
    "does",
    "set",
    "under",
    "general",
    "research",
    "university",
    "january",
    "mail",
    "full",
    "map",
    "reviews",
    "program",
    "life",
    "know",
    "games",
    "way",
    "days",
    "management",
    "part",
    "could",
    "great",
    "united",
    "hotel",
    "real",
    "item",
    "international",
    "center",
    "ebay",
    "must",
    "store",
    "travel",
    "comments",
    "made",
    "development",
    "report",
    "off",
    "member",
    "details",
    "line",
    "terms",
    "before",
    "hotels",
    "did",
    "send",
    "right",
    "type",
    "because",
    "local",
    "those",
    "using",
    "results",
    "office",
    "education",
    "national",
    "car",
    "design",
    "take",
    "posted",
    "internet",
    "address",
    "community",
    "within",
    "states",
    "area",
    "want",
    "phone",
    "shipping",
    "reserved",
    "subject",
    "between",
    "forum",
    "family",
    "meeting",
    "invoice",
    "quarter",
    "budget",
    "server",
    "backup",
    "cluster",
    "failover",
    "schedule",
    "attached",
    "thanks",
];
const NAMES: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "oscar", "peggy", "rupert", "sybil", "trent", "victor", "walter",
];
const DOMAINS: &[&str] = &["example.com", "example.org", "example.net", "corp.example"];
const DAYS: &[&str] = &["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MONTHS: &[&str] = &[
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A sentence of 4 to 18 words, capitalised, ended by a full stop.
fn sentence(rng: &mut StdRng) -> String {
    let n = rng.gen_range(4..19);
    let mut s: Vec<String> = (0..n)
        .map(|_| WORDS.choose(rng).expect("words").to_string())
        .collect();
    if let Some(first) = s.first_mut() {
        let mut c = first.chars();
        *first = c
            .next()
            .map(|h| h.to_uppercase().chain(c).collect())
            .unwrap_or_default();
    }
    format!("{}.", s.join(" "))
}

fn address(rng: &mut StdRng) -> String {
    format!(
        "{}@{}",
        NAMES.choose(rng).expect("names"),
        DOMAINS.choose(rng).expect("domains")
    )
}

/// One message: headers, a blank line, paragraphs wrapped at 72 columns and, in some, a
/// quoted earlier message.
fn message(rng: &mut StdRng, n: u64) -> String {
    let mut m = String::new();
    let subject = (0..rng.gen_range(2..7))
        .map(|_| *WORDS.choose(rng).expect("words"))
        .collect::<Vec<_>>()
        .join(" ");
    let from = address(rng);
    m.push_str(&format!(
        "From: {from}\r\nTo: {}\r\nSubject: {}{subject}\r\nDate: {}, {} {} 2026 {:02}:{:02}:{:02} +0000\r\n\
         Message-ID: <{n}.{:08x}@{}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        address(rng),
        if rng.gen_bool(0.4) { "Re: " } else { "" },
        DAYS.choose(rng).expect("days"),
        rng.gen_range(1..29),
        MONTHS.choose(rng).expect("months"),
        rng.gen_range(0..24),
        rng.gen_range(0..60),
        rng.gen_range(0..60),
        rng.gen::<u32>(),
        DOMAINS.choose(rng).expect("domains"),
    ));
    for _ in 0..rng.gen_range(1..6) {
        let para: Vec<String> = (0..rng.gen_range(1..6)).map(|_| sentence(rng)).collect();
        let quote = if rng.gen_bool(0.2) { "> " } else { "" };
        let mut line = String::new();
        for word in para.join(" ").split(' ') {
            if line.len() + word.len() > 72 {
                m.push_str(&format!("{quote}{line}\r\n"));
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        m.push_str(&format!("{quote}{line}\r\n\r\n"));
    }
    m.push_str(&format!("-- \r\n{from}\r\n\r\n"));
    m
}

/// `len` bytes of mail text (RFC 5322 messages) from `seed`: what compression tests
/// replicate as the compressible part.
pub fn mail_text(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut text = String::with_capacity(len + 4096);
    let mut n = 0;
    while text.len() < len {
        text.push_str(&message(&mut rng, n));
        n += 1;
    }
    let mut bytes = text.into_bytes();
    bytes.truncate(len);
    bytes
}

/// `size` bytes (a multiple of 128 KiB) of the mixed workload, from `seed`, to `path`.
pub fn write_mixed(path: &Path, size: u64, seed: u64) -> Result<(), BenchError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out =
        std::fs::File::create(path).map_err(io(format!("creating {}", path.display())))?;
    let mut text = String::new();
    let mut n = 0;
    let mut random = vec![0u8; PIECE];
    for _ in 0..size / (2 * PIECE as u64) {
        while text.len() < PIECE {
            text.push_str(&message(&mut rng, n));
            n += 1;
        }
        let rest = text.split_off(PIECE);
        rng.fill_bytes(&mut random);
        out.write_all(text.as_bytes())
            .and_then(|()| out.write_all(&random))
            .map_err(io(format!("writing {}", path.display())))?;
        text = rest;
    }
    out.sync_all()
        .map_err(io(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_text_half_random_and_the_same_from_a_seed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write_mixed(&a, 1 << 20, 7).unwrap();
        write_mixed(&b, 1 << 20, 7).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(bytes.len(), 1 << 20);
        assert_eq!(bytes, std::fs::read(&b).unwrap());
        let text = std::str::from_utf8(&bytes[..PIECE]).unwrap();
        assert!(text.contains("\r\nSubject: ") && text.contains("\r\nMessage-ID: <"));
        let compressed = zstd::bulk::compress(&bytes, 3).unwrap();
        let ratio = bytes.len() as f64 / compressed.len() as f64;
        assert!((1.5..2.2).contains(&ratio), "ratio {ratio}");
    }
}
