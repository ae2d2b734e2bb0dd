//! Terms: how text becomes the words lexical search and duplicate detection compare.
//!
//! Lowercase, split on anything that is not a letter or digit (an apostrophe's
//! tail such as `'s` is dropped), stop words removed, English Snowball stems.

use std::sync::LazyLock;

use rust_stemmers::{Algorithm, Stemmer};

static STEMMER: LazyLock<Stemmer> = LazyLock::new(|| Stemmer::create(Algorithm::English));

/// Words too common to say anything about what a text is about.
const STOP: &[&str] = &[
    "a",
    "about",
    "after",
    "again",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "been",
    "before",
    "being",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "let",
    "me",
    "more",
    "most",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "same",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
    "s",
    "t",
    "d",
    "ll",
    "m",
    "re",
    "ve",
    "oh",
    "yeah",
    "hey",
    "hi",
    "wow",
    "ok",
    "okay",
    "really",
    "thanks",
    "thank",
    "yes",
    "get",
    "got",
    "like",
    "much",
    "one",
    "know",
    "think",
    "sure",
    "thing",
    "things",
    "lot",
    "way",
    "even",
    "well",
    "go",
    "going",
    "make",
    "made",
    "see",
    "said",
    "say",
];

/// Whether `word` (lowercase) is a stop word.
pub fn is_stop(word: &str) -> bool {
    STOP.contains(&word)
}

/// The lowercase words of `text`, apostrophe tails dropped, stop words kept.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for raw in text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’')) {
        let head = raw.split(['\'', '’']).next().unwrap_or("");
        if !head.is_empty() {
            out.push(head.to_lowercase());
        }
    }
    out
}

/// The stemmed content terms of `text`, in order, repeats kept.
pub fn terms(text: &str) -> Vec<String> {
    words(text)
        .into_iter()
        .filter(|w| !is_stop(w))
        .map(|w| STEMMER.stem(&w).into_owned())
        .collect()
}

/// How many model tokens a text costs, estimated as whitespace words × 1.3.
pub fn token_cost(text: &str) -> usize {
    let words = text.split_whitespace().count();
    (words as f64 * 1.3).ceil() as usize
}

/// Jaccard similarity of two texts' content-term sets.
pub fn jaccard(a: &str, b: &str) -> f32 {
    use std::collections::BTreeSet;
    let a: BTreeSet<String> = terms(a).into_iter().collect();
    let b: BTreeSet<String> = terms(b).into_iter().collect();
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let inter = a.intersection(&b).count() as f32;
    inter / a.union(&b).count() as f32
}

/// Text normalised for exact-duplicate detection: lowercase words joined by one space.
pub fn normalise(text: &str) -> String {
    words(text).join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_drop_stop_words_and_stem() {
        assert_eq!(terms("I'm running to the Paintings!"), vec!["run", "paint"]);
        assert_eq!(normalise("  Hello,   World! "), "hello world");
        assert_eq!(token_cost("one two three four five six seven eight nine ten"), 13);
        assert!((jaccard("likes green tea", "likes green tea") - 1.0).abs() < 1e-6);
        assert!(jaccard("likes green tea", "plays chess") < 0.01);
    }
}
