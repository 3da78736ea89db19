//! The trained byte-level BPE (issue 6): lossless on any bytes, reloads to the same
//! ids, trains on the tiny corpus in seconds and compresses it, refuses bad files.

use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use tinylm::tokenizer::bpe::{train_bpe, train_bpe_from_text, BpeTokenizer, BpeTrainOptions};
use tinylm::tokenizer::stats::stats;
use tinylm::tokenizer::Tokenizer;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name)
}

/// English and code, so that the shared tokenizer also has multi-byte ASCII merges.
const ENGLISH: &str = "The quick brown fox jumps over the lazy dog. It's the end of the line, \
isn't it? We'll see: 3.14159 and 2718 are numbers.\n    fn main() { println!(\"hello\"); }\n\
Tabs\tand  double  spaces,\r\nand Windows line ends.\n";

/// A small BPE trained once on the tiny corpus plus some English (vocab 1024).
fn shared() -> &'static BpeTokenizer {
    static TOK: OnceLock<BpeTokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let mut text = std::fs::read_to_string(data("zh_tiny.txt")).unwrap();
        for _ in 0..20 {
            text.push_str(ENGLISH);
        }
        train_bpe_from_text(&text, &BpeTrainOptions::new(1024)).unwrap()
    })
}

fn assert_round_trip(tok: &BpeTokenizer, input: &[u8]) {
    let ids = tok.encode(input).unwrap();
    assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
    let back = tok.decode(&ids);
    assert_eq!(back, input, "round trip failed; ids {ids:?}");
}

proptest! {
    #[test]
    fn round_trip_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        assert_round_trip(shared(), &bytes);
    }

    #[test]
    fn round_trip_arbitrary_utf8(s in any::<String>()) {
        assert_round_trip(shared(), s.as_bytes());
    }

    /// Text close to the corpus: Han, its punctuation, and every kind of space.
    #[test]
    fn round_trip_corpus_like_text(s in "[春眠不觉晓处闻啼鸟𠀀，。、？！「」…· \n\r\ta-z'0-9\u{3000}]{0,300}") {
        assert_round_trip(shared(), s.as_bytes());
    }

    /// The direct path gives the pipeline's ids on any text.
    #[test]
    fn direct_encoding_matches_the_tokenizers_pipeline(
        s in "([春眠不觉晓处闻啼鸟𠀀，。、？！「」…· \n\r\ta-zA-Z'0-9\u{3000}\u{85}]|\\PC){0,200}"
    ) {
        let tok = shared();
        prop_assert_eq!(tok.encode(s.as_bytes()).unwrap(), tok.encode_reference(&s).unwrap());
    }

    /// Valid text with invalid bytes spliced in.
    #[test]
    fn round_trip_text_with_invalid_bytes(
        s in "[春眠不觉晓，。\n a-z]{0,100}",
        bad in prop::collection::vec(0x80u8..=0xff, 1..4),
        at in 0usize..100,
    ) {
        let mut bytes = s.into_bytes();
        let at = at.min(bytes.len());
        bytes.splice(at..at, bad);
        assert_round_trip(shared(), &bytes);
    }
}

#[test]
fn invalid_bytes_get_single_byte_tokens() {
    let tok = shared();
    for b in 0x80..=0xffu8 {
        let ids = tok.encode(&[b]).unwrap();
        assert_eq!(ids.len(), 1, "byte {b:#x}");
        assert_eq!(tok.token_bytes(ids[0]), [b]);
    }
    // A truncated Han character (first two of its three bytes) stays two byte tokens.
    let ids = tok.encode(&"春".as_bytes()[..2]).unwrap();
    assert_eq!(ids.len(), 2);
}

#[test]
fn every_token_has_bytes_and_all_256_bytes_are_tokens() {
    let tok = shared();
    assert_eq!(tok.vocab_size(), 1024);
    let mut single = std::collections::HashSet::new();
    for id in 0..tok.vocab_size() as u32 {
        let b = tok.token_bytes(id);
        assert!(!b.is_empty(), "token {id} has no bytes");
        if b.len() == 1 {
            single.insert(b[0]);
        }
    }
    assert_eq!(single.len(), 256);
    assert!(tok.token_bytes(tok.vocab_size() as u32).is_empty());
}

#[test]
fn saved_tokenizer_reloads_to_identical_ids() {
    let tok = shared();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    let back = BpeTokenizer::load(&path).unwrap();
    let text = std::fs::read(data("zh_tiny.txt")).unwrap();
    let mut probe = text[..20_000].to_vec();
    probe.extend_from_slice(ENGLISH.as_bytes());
    probe.extend_from_slice(b"\xff\xfe broken \xe6\x98");
    let a = tok.encode(&probe).unwrap();
    let b = back.encode(&probe).unwrap();
    println!("{} ids, first {:?}", a.len(), &a[..10]);
    assert_eq!(a, b);
    assert_eq!(tok.vocab_size(), back.vocab_size());
    for id in 0..tok.vocab_size() as u32 {
        assert_eq!(tok.token_bytes(id), back.token_bytes(id));
    }
    assert_eq!(tok.fingerprint(), back.fingerprint());
    // Saving the reloaded tokenizer writes the same file.
    assert_eq!(tok.to_json().unwrap(), back.to_json().unwrap());

    // The resolver takes a file or a directory holding tokenizer.json.
    for spec in [path.to_str().unwrap(), dir.path().to_str().unwrap()] {
        let t = Tokenizer::load(spec).unwrap();
        assert_eq!(t.encode(&probe).unwrap(), a);
        assert_eq!(t.fingerprint(), Tokenizer::Bpe(tok.clone()).fingerprint());
    }
    assert!(matches!(
        Tokenizer::load("bytes").unwrap(),
        Tokenizer::Bytes
    ));
}

/// Long inputs are cut at line breaks and encoded in parallel, by a direct path that
/// skips the `tokenizers` pipeline; the ids must be those of one pipeline call over
/// the whole text (which is what Python gives).
#[test]
fn chunked_direct_encoding_matches_the_tokenizers_pipeline() {
    let tok = shared();
    assert!(tok.encodes_directly());
    let text = std::fs::read_to_string(data("zh_tiny.txt")).unwrap();
    let mut mixed = text.clone();
    for _ in 0..400 {
        mixed.push_str(ENGLISH);
        mixed.push_str("  \n\n 春\n \n秋  \n");
    }
    for t in [&text, &mixed] {
        assert!(t.len() > 150_000);
        let whole = tok.encode_reference(t).unwrap();
        let ours = tok.encode(t.as_bytes()).unwrap();
        assert_eq!(whole, ours);
    }
}

#[test]
fn training_on_tiny_corpus_succeeds_and_compresses() {
    let opts = BpeTrainOptions::new(1024);
    let tok = train_bpe(&[data("zh_tiny.txt")], &opts).unwrap();
    assert_eq!(tok.vocab_size(), 1024);
    let text = std::fs::read(data("zh_tiny.txt")).unwrap();
    let tok = Tokenizer::Bpe(tok);
    let s = stats(&tok, &text).unwrap();
    println!("{s}");
    assert!(s.bytes_per_token > 1.5, "bytes/token {}", s.bytes_per_token);
    assert_eq!(tok.decode(&tok.encode(&text).unwrap()), text);
}

#[test]
fn training_is_deterministic_and_fingerprints_tell_tokenizers_apart() {
    let text = std::fs::read_to_string(data("zh_tiny.txt")).unwrap();
    let text: String = text.split_inclusive('\n').take(2000).collect();
    let text = text.as_str();
    let a = train_bpe_from_text(text, &BpeTrainOptions::new(600)).unwrap();
    let b = train_bpe_from_text(text, &BpeTrainOptions::new(600)).unwrap();
    assert_eq!(a.to_json().unwrap(), b.to_json().unwrap());
    assert_eq!(a.fingerprint(), b.fingerprint());
    let mut opts = BpeTrainOptions::new(600);
    opts.han_piece = 2;
    let c = train_bpe_from_text(text, &opts).unwrap();
    let d = train_bpe_from_text(text, &BpeTrainOptions::new(700)).unwrap();
    let fps: Vec<String> = [a, c, d]
        .into_iter()
        .map(|t| Tokenizer::Bpe(t).fingerprint())
        .collect();
    println!("{fps:?}");
    assert_ne!(fps[0], fps[1]);
    assert_ne!(fps[0], fps[2]);
    assert_ne!(Tokenizer::Bytes.fingerprint(), fps[0]);
}

#[test]
fn bad_training_requests_are_errors() {
    assert!(train_bpe_from_text("abc", &BpeTrainOptions::new(100)).is_err());
    assert!(train_bpe(&[], &BpeTrainOptions::new(1000)).is_err());
    assert!(train_bpe(&[data("no_such_file.txt")], &BpeTrainOptions::new(1000)).is_err());
    // A text too small for the vocabulary gives a smaller one, not an error.
    let t = train_bpe_from_text("ab ab ab", &BpeTrainOptions::new(5000)).unwrap();
    assert!(t.vocab_size() >= 256 && t.vocab_size() < 5000);
    assert_round_trip(&t, "ab abc 春".as_bytes());
}

fn load_err(bytes: &[u8]) -> String {
    match BpeTokenizer::from_json_bytes(bytes) {
        Ok(_) => panic!(
            "accepted {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn untrusted_tokenizer_files_give_clean_errors() {
    let json: serde_json::Value = serde_json::from_str(&shared().to_json().unwrap()).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = json.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("garbage", (0..=255u8).cycle().take(3000).collect()),
        ("other json", br#"{"hello": [1, 2, 3]}"#.to_vec()),
        (
            "truncated",
            serde_json::to_vec(&json).unwrap()[..5000].to_vec(),
        ),
        (
            "wordlevel model",
            br#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
                "normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
                "model":{"type":"WordLevel","vocab":{"a":0,"[UNK]":1},"unk_token":"[UNK]"}}"#
                .to_vec(),
        ),
        (
            "normalizer",
            edit(&|v| v["normalizer"] = serde_json::json!({"type": "Lowercase"})),
        ),
        (
            "no byte level",
            edit(&|v| v["pre_tokenizer"] = serde_json::Value::Null),
        ),
        (
            "prefix space",
            edit(&|v| {
                v["pre_tokenizer"] = serde_json::json!({"type": "ByteLevel", "add_prefix_space": true,
                                       "trim_offsets": true, "use_regex": true})
            }),
        ),
        (
            "missing byte token",
            edit(&|v| {
                let vocab = v["model"]["vocab"].as_object_mut().unwrap();
                let last = vocab.len() - 1;
                // Renumber nothing: drop the token for '!' and reuse its id for a new one.
                let id = vocab.remove("!").unwrap();
                vocab.insert("zzzz".into(), id);
                let _ = last;
            }),
        ),
        (
            "sparse ids",
            edit(&|v| {
                let vocab = v["model"]["vocab"].as_object_mut().unwrap();
                vocab.insert("qqqq".into(), serde_json::json!(5000));
            }),
        ),
        (
            "stripping added token",
            edit(&|v| {
                v["added_tokens"] = serde_json::json!([{"id": 1024, "content": "<|x|>",
                    "single_word": false, "lstrip": true, "rstrip": false,
                    "normalized": false, "special": true}])
            }),
        ),
        (
            "bad regex",
            edit(&|v| v["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(".into()),
        ),
    ];
    for (name, bytes) in cases {
        let e = load_err(&bytes);
        println!("{name}: {e}");
    }
    // Through the file API too.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, b"\x00\x01garbage").unwrap();
    let e = BpeTokenizer::load(&p).unwrap_err();
    assert!(format!("{e:#}").contains("tokenizer.json"), "{e:#}");
    assert!(BpeTokenizer::load(&dir.path().join("missing.json")).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random corruption of a valid file: an error or a working tokenizer, never a panic.
    #[test]
    fn corrupted_tokenizer_files_never_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)
    ) {
        let mut bytes = shared().to_json().unwrap().into_bytes();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if let Ok(t) = BpeTokenizer::from_json_bytes(&bytes) {
            assert_round_trip(&t, "春眠不觉晓，处处闻啼鸟。\nHello, world!\n".as_bytes());
        }
    }
}

/// A foreign file may carry special tokens; they stand for their text, so the round
/// trip still holds.
#[test]
fn added_special_tokens_round_trip_as_their_text() {
    let mut v: serde_json::Value = serde_json::from_str(&shared().to_json().unwrap()).unwrap();
    v["added_tokens"] = serde_json::json!([{"id": 1024, "content": "<|endoftext|>",
        "single_word": false, "lstrip": false, "rstrip": false,
        "normalized": false, "special": true}]);
    let tok = BpeTokenizer::from_json_bytes(&serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!(tok.vocab_size(), 1025);
    let text = "春眠<|endoftext|>不觉晓\n<|endoftext|>".as_bytes();
    let ids = tok.encode(text).unwrap();
    println!("{ids:?}");
    assert_eq!(ids.iter().filter(|&&id| id == 1024).count(), 2);
    assert_eq!(tok.decode(&ids), text);
    assert_ne!(tok.fingerprint(), shared().fingerprint());
}
