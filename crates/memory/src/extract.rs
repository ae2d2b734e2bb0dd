//! Extraction: turning messages into atomic facts.
//!
//! [`Extractor`] is the seam; [`RuleExtractor`] is the built-in, deterministic
//! one used by default and in tests, and [`crate::chat::ChatExtractor`] asks an
//! OpenAI-compatible chat model.
//!
//! The rule extractor works sentence by sentence:
//! - **speaker attribution**: first-person words become the speaker's name
//!   ("I live in Oslo" said by Ana → "Ana lives in Oslo"), verbs agreeing;
//! - **dates**: relative expressions are resolved against the time the message
//!   was observed and written out ("yesterday" → "yesterday (7 May 2023)");
//! - **entities**: capitalised names, plus the speaker;
//! - **fact patterns** for first-person statements that have one current value
//!   (where one lives or works, one's name, age, favourites, likes and dislikes)
//!   give the fact a *slot key*, so a later statement with the same key
//!   supersedes it, and retractions ("I no longer live in Oslo") retire it;
//! - filler (greetings, one-word answers) and questions are dropped; a
//!   sentence opening with a pronoun stays with the one before it.

use futures::future::BoxFuture;
use strata_core::Result;

use crate::calendar;
use crate::term;

/// One message to extract from: who said it and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// The speaker's name ("user" and "assistant" when the caller gave no name).
    pub speaker: String,
    /// What was said.
    pub text: String,
}

/// A relation between two entities, or an entity mention (`object` empty).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Relation {
    /// The entity the relation starts from.
    pub subject: String,
    /// Its kind (`mentions`, `lives_in`, `likes`, …).
    pub relation: String,
    /// The entity it points to; empty for a mention.
    pub object: String,
}

/// One atomic fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    /// The fact as a self-contained sentence.
    pub text: String,
    /// A slot key such as `ana|lives_in`: facts with one key have one current value.
    pub key: Option<String>,
    /// Whether the fact retracts what its key holds instead of asserting it.
    pub retract: bool,
    /// Entities and relations the fact states.
    pub relations: Vec<Relation>,
}

/// Turns messages into facts.
pub trait Extractor: Send + Sync + 'static {
    /// A short name for logs and responses (`rules`, `chat:MODEL`).
    fn name(&self) -> &str;

    /// The facts in `turns`, observed at `observed_at` (epoch ms).
    fn extract<'a>(&'a self, turns: &'a [Turn], observed_at: i64) -> BoxFuture<'a, Result<Vec<Fact>>>;
}

/// The built-in deterministic extractor.
#[derive(Debug, Default, Clone, Copy)]
pub struct RuleExtractor;

impl Extractor for RuleExtractor {
    fn name(&self) -> &str {
        "rules"
    }

    fn extract<'a>(&'a self, turns: &'a [Turn], observed_at: i64) -> BoxFuture<'a, Result<Vec<Fact>>> {
        Box::pin(async move { Ok(rule_facts(turns, observed_at)) })
    }
}

/// The rule extractor's work, synchronous.
pub fn rule_facts(turns: &[Turn], observed_at: i64) -> Vec<Fact> {
    let mut out = Vec::new();
    for turn in turns {
        let speaker = display_name(&turn.speaker);
        for sentence in units(&turn.text) {
            if let Some(f) = fact_of(&speaker, &sentence, observed_at)
                && !out.iter().any(|o: &Fact| o.text == f.text)
            {
                out.push(f);
            }
        }
    }
    out
}

/// Words that open a sentence leaning on the one before ("It was great.").
const LEANING: &[&str] = &[
    "it", "that", "this", "they", "these", "those", "he", "she", "its", "there", "which",
];

/// Sentences, with each one that opens with a pronoun joined to the one before
/// it, so a fact stays self-contained without coreference resolution.
pub fn units(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in sentences(text) {
        let first = term::words(&s).into_iter().next().unwrap_or_default();
        match out.last_mut() {
            Some(prev) if LEANING.contains(&first.as_str()) => {
                prev.push(' ');
                prev.push_str(&s);
            }
            _ => out.push(s),
        }
    }
    out
}

fn display_name(s: &str) -> String {
    match s.trim() {
        "" | "user" => "User".to_string(),
        "assistant" => "Assistant".to_string(),
        other => other.to_string(),
    }
}

/// Splits text into sentences at `.`, `!`, `?` (and line breaks) followed by
/// space, keeping common abbreviations and decimals intact.
pub fn sentences(text: &str) -> Vec<String> {
    const ABBREV: &[&str] = &[
        "mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "jr", "sr",
    ];
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            push_sentence(&mut out, &mut cur);
            i += 1;
            continue;
        }
        cur.push(c);
        if matches!(c, '.' | '!' | '?') {
            // Swallow runs like "?!" or "...".
            while i + 1 < chars.len() && matches!(chars[i + 1], '.' | '!' | '?' | '"' | '\'' | ')') {
                i += 1;
                cur.push(chars[i]);
            }
            let at_end = i + 1 >= chars.len();
            let then_space = !at_end && chars[i + 1].is_whitespace();
            let last_word = cur
                .trim_end_matches(['.', '!', '?'])
                .rsplit(|ch: char| ch.is_whitespace())
                .next()
                .unwrap_or("")
                .to_lowercase();
            let abbrev = c == '.' && ABBREV.contains(&last_word.as_str());
            if (at_end || then_space) && !abbrev {
                push_sentence(&mut out, &mut cur);
            }
        }
        i += 1;
    }
    push_sentence(&mut out, &mut cur);
    out
}

fn push_sentence(out: &mut Vec<String>, cur: &mut String) {
    let s = cur.trim();
    if !s.is_empty() {
        out.push(s.to_string());
    }
    cur.clear();
}

const ADVERBS: &[&str] = &[
    "also",
    "always",
    "never",
    "just",
    "still",
    "really",
    "often",
    "usually",
    "sometimes",
    "recently",
    "finally",
    "actually",
    "totally",
    "definitely",
    "only",
    "even",
    "already",
    "truly",
    "absolutely",
    "both",
    "all",
    "mostly",
    "now",
    "currently",
    "sort",
    "kind",
    "honestly",
    "seriously",
    "especially",
    "probably",
    "certainly",
    "first",
];

const NO_AGREEMENT: &[&str] = &[
    "can",
    "could",
    "will",
    "would",
    "should",
    "might",
    "must",
    "may",
    "shall",
    "did",
    "didn't",
    "can't",
    "won't",
    "couldn't",
    "wouldn't",
    "shouldn't",
    "had",
    "hadn't",
    "was",
    "wasn't",
    "were",
    "went",
    "saw",
    "got",
    "made",
    "took",
    "came",
    "ran",
    "ate",
    "felt",
    "found",
    "gave",
    "thought",
    "told",
    "became",
    "began",
    "bought",
    "brought",
    "built",
    "caught",
    "chose",
    "drew",
    "drank",
    "drove",
    "fell",
    "flew",
    "forgot",
    "grew",
    "heard",
    "held",
    "kept",
    "knew",
    "left",
    "lost",
    "met",
    "paid",
    "put",
    "read",
    "said",
    "sat",
    "sent",
    "set",
    "slept",
    "spent",
    "spoke",
    "stood",
    "swam",
    "taught",
    "understood",
    "woke",
    "won",
    "wore",
    "wrote",
    "hurt",
    "let",
    "cut",
    "hit",
    "quit",
    "shut",
    "led",
    "fed",
    "won't",
    "needn't",
    "used",
    "bet",
    "cast",
    "cost",
    "dealt",
    "dug",
    "fought",
    "hung",
    "lit",
    "meant",
    "rode",
    "rang",
    "sang",
    "sank",
    "shot",
    "shook",
    "sold",
    "stuck",
    "struck",
    "swore",
    "threw",
    "tore",
    "wept",
    "wound",
    "gotta",
    "gonna",
    "wanna",
    "guess",
    "mean",
];

/// Third-person singular of a present-tense verb.
fn agree(verb: &str) -> String {
    match verb {
        "am" | "'m" => return "is".into(),
        "have" => return "has".into(),
        "do" => return "does".into(),
        "don't" | "don’t" => return "doesn't".into(),
        "haven't" | "haven’t" => return "hasn't".into(),
        "go" => return "goes".into(),
        _ => {}
    }
    if NO_AGREEMENT.contains(&verb)
        || verb.ends_with("ed")
        || verb.contains('\'')
        || verb.contains('’')
        || !verb.chars().all(|c| c.is_ascii_lowercase())
    {
        return verb.to_string();
    }
    if verb.ends_with('s')
        || verb.ends_with("sh")
        || verb.ends_with("ch")
        || verb.ends_with('x')
        || verb.ends_with('z')
        || verb.ends_with('o')
    {
        format!("{verb}es")
    } else if verb.ends_with('y') && !verb.ends_with("ay") && !verb.ends_with("ey") && !verb.ends_with("oy") {
        format!("{}ies", &verb[..verb.len() - 1])
    } else {
        format!("{verb}s")
    }
}

/// Splits a token into leading punctuation, core word and trailing punctuation.
fn split_token(tok: &str) -> (&str, &str, &str) {
    let start = tok
        .char_indices()
        .find(|(_, c)| c.is_alphanumeric())
        .map_or(tok.len(), |(i, _)| i);
    let end = tok
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_alphanumeric())
        .map_or(start, |(i, c)| i + c.len_utf8());
    if start >= end {
        return (tok, "", "");
    }
    (&tok[..start], &tok[start..end], &tok[end..])
}

/// Rewrites first-person words as the speaker, making the verb after "I" agree.
pub fn third_person(speaker: &str, sentence: &str) -> String {
    let toks: Vec<&str> = sentence.split_whitespace().collect();
    let mut out: Vec<String> = Vec::with_capacity(toks.len());
    let mut agree_next = false;
    for tok in toks {
        let (pre, core, post) = split_token(tok);
        let lower = core.to_lowercase().replace('’', "'");
        let replaced = match lower.as_str() {
            "i" => {
                agree_next = true;
                Some(speaker.to_string())
            }
            "i'm" | "im" => Some(format!("{speaker} is")),
            "i've" => Some(format!("{speaker} has")),
            "i'll" => Some(format!("{speaker} will")),
            "i'd" => Some(format!("{speaker} would")),
            "me" | "myself" => Some(speaker.to_string()),
            "my" | "mine" => Some(format!("{speaker}'s")),
            _ => None,
        };
        if let Some(r) = replaced {
            out.push(format!("{pre}{r}{post}"));
            continue;
        }
        if agree_next && !core.is_empty() {
            if ADVERBS.contains(&lower.as_str()) {
                out.push(tok.to_string());
                continue;
            }
            agree_next = false;
            if pre.is_empty() {
                out.push(format!("{}{post}", agree(&lower)));
                continue;
            }
        }
        agree_next = false;
        out.push(tok.to_string());
    }
    out.join(" ")
}

const NUMBER_WORDS: &[(&str, i64)] = &[
    ("a", 1),
    ("an", 1),
    ("one", 1),
    ("two", 2),
    ("three", 3),
    ("four", 4),
    ("five", 5),
    ("six", 6),
    ("seven", 7),
    ("eight", 8),
    ("nine", 9),
    ("ten", 10),
    ("couple", 2),
    ("few", 3),
];

/// Dates named relative to `observed_at`, resolved and written out.
pub fn resolve_dates(sentence: &str, observed_at: i64) -> Vec<String> {
    let today = calendar::day_of(observed_at);
    let (y, m, _) = calendar::civil_from_days(today);
    let words: Vec<String> = term::words(sentence);
    let mut out = Vec::new();
    let mut push = |s: String| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    for (i, w) in words.iter().enumerate() {
        let next = words.get(i + 1).map(String::as_str).unwrap_or("");
        let prev = if i > 0 { words[i - 1].as_str() } else { "" };
        match (w.as_str(), next) {
            ("yesterday", _) => push(calendar::format_day(today - 1)),
            ("today" | "tonight", _) => push(calendar::format_day(today)),
            ("tomorrow", _) => push(calendar::format_day(today + 1)),
            ("this", "morning" | "afternoon" | "evening") => push(calendar::format_day(today)),
            ("last", "night") => push(calendar::format_day(today - 1)),
            ("last", "week") => push(format!("the week before {}", calendar::format_day(today))),
            ("last", "weekend") => push(format!("the weekend before {}", calendar::format_day(today))),
            ("next", "week") => push(format!("the week after {}", calendar::format_day(today))),
            ("next", "weekend") => push(format!("the weekend after {}", calendar::format_day(today))),
            ("next", "month") => push(calendar::format_month(
                if m == 12 { y + 1 } else { y },
                if m == 12 { 1 } else { m + 1 },
            )),
            ("last", "month") => push(calendar::format_month(
                if m == 1 { y - 1 } else { y },
                if m == 1 { 12 } else { m - 1 },
            )),
            ("this", "month") => push(calendar::format_month(y, m)),
            ("last", "year") => push((y - 1).to_string()),
            ("this", "year") => push(y.to_string()),
            ("next", "year") => push((y + 1).to_string()),
            ("last", day) if calendar::weekday_named(day).is_some() => {
                let want = calendar::weekday_named(day).unwrap_or(0);
                let mut d = today - 1;
                while calendar::weekday(d) != want {
                    d -= 1;
                }
                push(calendar::format_day(d));
            }
            ("ago", _) if i >= 2 || (i >= 1 && !prev.is_empty()) => {
                // "<n> <unit> ago", "a couple of weeks ago", "a few days ago".
                let unit = prev.trim_end_matches('s');
                let n_word = if i >= 2 { words[i - 2].as_str() } else { "" };
                let n_word = if n_word == "of" && i >= 3 {
                    words[i - 3].as_str()
                } else {
                    n_word
                };
                let n = n_word
                    .parse::<i64>()
                    .ok()
                    .or_else(|| NUMBER_WORDS.iter().find(|(w, _)| *w == n_word).map(|(_, n)| *n));
                if let Some(n) = n.filter(|n| (1..=100).contains(n)) {
                    match unit {
                        "day" => push(calendar::format_day(today - n)),
                        "week" => push(format!("the week of {}", calendar::format_day(today - 7 * n))),
                        "month" => {
                            let total = y * 12 + i64::from(m) - 1 - n;
                            push(calendar::format_month(
                                total.div_euclid(12),
                                (total.rem_euclid(12) + 1) as u32,
                            ));
                        }
                        "year" => push((y - n).to_string()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Capitalised names in a sentence (runs of capitalised words), excluding the
/// sentence's first word when it is a common word, and the pronoun "I".
pub fn entities(sentence: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut run: Vec<&str> = Vec::new();
    let toks: Vec<&str> = sentence.split_whitespace().collect();
    let flush = |run: &mut Vec<&str>, out: &mut Vec<String>| {
        if !run.is_empty() {
            let name = run.join(" ");
            if !out.contains(&name) {
                out.push(name);
            }
            run.clear();
        }
    };
    for (i, tok) in toks.iter().enumerate() {
        let (_, core, post) = split_token(tok);
        let core = core.split(['\'', '’']).next().unwrap_or("");
        let capital = core.chars().next().is_some_and(char::is_uppercase);
        let lower = core.to_lowercase();
        let common = term::is_stop(&lower)
            || calendar::weekday_named(core).is_some()
            || lower == "i"
            || (i == 0 && (ADVERBS.contains(&lower.as_str()) || GREETINGS.contains(&lower.as_str())));
        if capital && !common && core.chars().count() > 1 {
            run.push(core);
        } else {
            flush(&mut run, &mut out);
        }
        if !post.is_empty() {
            flush(&mut run, &mut out);
        }
    }
    flush(&mut run, &mut out);
    out
}

const GREETINGS: &[&str] = &[
    "hey",
    "hi",
    "hello",
    "wow",
    "thanks",
    "thank",
    "yeah",
    "yes",
    "no",
    "oh",
    "ok",
    "okay",
    "sure",
    "great",
    "awesome",
    "cool",
    "nice",
    "bye",
    "congrats",
    "congratulations",
    "haha",
    "lol",
    "aww",
    "omg",
    "good",
    "sounds",
    "glad",
    "sorry",
    "so",
    "well",
    "right",
    "exactly",
    "totally",
    "absolutely",
    "definitely",
    "amazing",
    "that",
];

fn is_filler(sentence: &str) -> bool {
    let content = term::terms(sentence);
    if content.len() >= 3 {
        return false;
    }
    let words = term::words(sentence);
    content.len() < 2
        || words
            .iter()
            .all(|w| GREETINGS.contains(&w.as_str()) || term::is_stop(w))
}

/// The part of `rest` up to a clause break, trimmed of articles.
fn object_phrase(rest: &[String]) -> Option<String> {
    const BREAK: &[&str] = &[
        "and", "but", "because", "since", "so", "with", "for", "when", "while", "now", "anymore", "though",
        "although", "which", "who", "where", "if", "too",
    ];
    let mut words: Vec<&str> = rest
        .iter()
        .map(String::as_str)
        .take_while(|w| !BREAK.contains(w))
        .take(6)
        .collect();
    while words
        .first()
        .is_some_and(|w| matches!(*w, "a" | "an" | "the" | "to"))
    {
        words.remove(0);
    }
    (!words.is_empty()).then(|| words.join(" "))
}

fn find_seq(words: &[String], seq: &[&str]) -> Option<usize> {
    words
        .windows(seq.len())
        .position(|w| w.iter().zip(seq).all(|(a, b)| a == b))
        .map(|i| i + seq.len())
}

/// Slot patterns over first-person statements: (words, relation, functional, retract).
const PATTERNS: &[(&[&str], &str, bool, bool)] = &[
    (&["i", "no", "longer", "live", "in"], "lives_in", true, true),
    (&["i", "don", "live", "in"], "lives_in", true, true),
    (&["i", "moved", "out", "of"], "lives_in", true, true),
    (&["i", "live", "in"], "lives_in", true, false),
    (&["i", "moved", "to"], "lives_in", true, false),
    (&["i", "no", "longer", "work", "at"], "works_at", true, true),
    (&["i", "no", "longer", "work", "for"], "works_at", true, true),
    (&["i", "quit", "my", "job", "at"], "works_at", true, true),
    (&["i", "work", "at"], "works_at", true, false),
    (&["i", "work", "for"], "works_at", true, false),
    (&["i", "work", "as"], "works_as", true, false),
    (&["my", "name", "is"], "name", true, false),
    (&["i", "no", "longer", "like"], "likes", false, true),
    (&["i", "don", "like"], "dislikes", false, false),
    (&["i", "do", "not", "like"], "dislikes", false, false),
    (&["i", "really", "like"], "likes", false, false),
    (&["i", "like"], "likes", false, false),
    (&["i", "love"], "likes", false, false),
    (&["i", "really", "love"], "likes", false, false),
    (&["i", "enjoy"], "likes", false, false),
    (&["i", "hate"], "dislikes", false, false),
    (&["i", "dislike"], "dislikes", false, false),
];

fn slot_of(speaker: &str, sentence: &str) -> Option<(String, bool, Relation)> {
    let words = term::words(sentence);
    let who = speaker.to_lowercase();
    // "my favorite X is Y"
    for fav in ["favorite", "favourite"] {
        if let Some(at) = find_seq(&words, &["my", fav]) {
            let rest = &words[at..];
            if let Some(is) = rest.iter().position(|w| w == "is" || w == "are") {
                let what = rest[..is].join(" ");
                if let (false, Some(obj)) = (what.is_empty(), object_phrase(&rest[is + 1..])) {
                    let rel = format!("favorite_{}", what.replace(' ', "_"));
                    return Some((
                        format!("{who}|{rel}"),
                        false,
                        Relation {
                            subject: speaker.into(),
                            relation: rel,
                            object: obj,
                        },
                    ));
                }
            }
        }
    }
    // "I am N years old", "I'm N years old"
    let at = find_seq(&words, &["i", "am"]).or_else(|| find_seq(&words, &["i"]));
    if let Some(at) = at
        && let (Some(n), Some("years")) = (words.get(at), words.get(at + 1).map(String::as_str))
        && n.parse::<u32>().is_ok()
    {
        return Some((
            format!("{who}|age"),
            false,
            Relation {
                subject: speaker.into(),
                relation: "age".into(),
                object: n.clone(),
            },
        ));
    }
    for (seq, rel, functional, retract) in PATTERNS {
        if let Some(at) = find_seq(&words, seq) {
            let obj = object_phrase(&words[at..]);
            let anymore = words.iter().any(|w| w == "anymore");
            let (rel, retract) = match (*rel, anymore) {
                ("dislikes", true) => ("likes", true),
                (r, true) if *functional => (r, true),
                (r, _) => (r, *retract),
            };
            let obj = match obj {
                Some(o) => o,
                None if retract && *functional => String::new(),
                None => continue,
            };
            // Likes and dislikes of one thing share a slot, so one supersedes the other.
            let key = if *functional {
                format!("{who}|{rel}")
            } else {
                format!("{who}|preference|{}", obj)
            };
            return Some((
                key,
                retract,
                Relation {
                    subject: speaker.into(),
                    relation: rel.into(),
                    object: obj,
                },
            ));
        }
    }
    None
}

fn fact_of(speaker: &str, sentence: &str, observed_at: i64) -> Option<Fact> {
    let slot = slot_of(speaker, sentence);
    // A question asks for a fact; it states none.
    let question = sentence.trim_end_matches(['"', '\'', ')', ' ']).ends_with('?');
    if slot.is_none() && (question || is_filler(sentence)) {
        return None;
    }
    let mut text = third_person(speaker, sentence);
    if !text.contains(speaker) {
        text = format!("{speaker}: {text}");
    }
    let dates = resolve_dates(sentence, observed_at);
    if !dates.is_empty() {
        let trimmed = text.trim_end_matches(['.', '!', '?']).to_string();
        let tail = &text[trimmed.len()..];
        text = format!("{trimmed} ({}){tail}", dates.join(", "));
    }
    let mut relations: Vec<Relation> = Vec::new();
    let mut names = vec![speaker.to_string()];
    for e in entities(sentence) {
        if !names.contains(&e) {
            names.push(e);
        }
    }
    for n in &names {
        relations.push(Relation {
            subject: n.clone(),
            relation: "mentions".into(),
            object: String::new(),
        });
    }
    // Names said together are related.
    for other in names.iter().skip(1) {
        relations.push(Relation {
            subject: speaker.to_string(),
            relation: "mentioned_with".into(),
            object: other.clone(),
        });
    }
    let (key, retract) = match slot {
        Some((key, retract, rel)) => {
            if !rel.object.is_empty() {
                relations.push(rel);
            }
            (Some(key), retract)
        }
        None => (None, false),
    };
    Some(Fact {
        text,
        key,
        retract,
        relations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAY_8_2023: i64 = 1_683_504_000_000; // 2023-05-08T00:00:00Z, a Monday

    fn facts(speaker: &str, text: &str) -> Vec<Fact> {
        rule_facts(
            &[Turn {
                speaker: speaker.into(),
                text: text.into(),
            }],
            MAY_8_2023,
        )
    }

    #[test]
    fn sentences_split_at_stops_but_not_abbreviations_or_decimals() {
        assert_eq!(
            sentences("Hi Dr. Smith! It costs 3.5 dollars. Really?! Yes\nNew line"),
            vec![
                "Hi Dr. Smith!",
                "It costs 3.5 dollars.",
                "Really?!",
                "Yes",
                "New line"
            ]
        );
    }

    #[test]
    fn first_person_becomes_the_speaker_with_agreeing_verbs() {
        assert_eq!(
            third_person("Ana", "I really love my dog and I went home."),
            "Ana really loves Ana's dog and Ana went home."
        );
        assert_eq!(
            third_person("Ana", "I'm tired, I watch TV."),
            "Ana is tired, Ana watches TV."
        );
    }

    #[test]
    fn relative_dates_resolve_against_the_observed_time() {
        assert_eq!(
            resolve_dates("I went there yesterday", MAY_8_2023),
            vec!["7 May 2023"]
        );
        assert_eq!(
            resolve_dates("last Friday was fun", MAY_8_2023),
            vec!["5 May 2023"]
        );
        assert_eq!(resolve_dates("two years ago", MAY_8_2023), vec!["2021"]);
        assert_eq!(resolve_dates("3 months ago", MAY_8_2023), vec!["February 2023"]);
        assert_eq!(resolve_dates("last year", MAY_8_2023), vec!["2022"]);
        let f = facts(
            "Caroline",
            "I went to a LGBTQ support group yesterday and it was so powerful.",
        );
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].text,
            "Caroline went to a LGBTQ support group yesterday and it was so powerful (7 May 2023)."
        );
        assert!(f[0].relations.iter().any(|r| r.subject == "LGBTQ"));
    }

    #[test]
    fn questions_are_dropped_and_pronoun_sentences_stay_with_their_antecedent() {
        let f = facts(
            "Mel",
            "I signed up for a pottery class. It is like therapy for me. Do you paint?",
        );
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].text,
            "Mel signed up for a pottery class. It is like therapy for Mel."
        );
    }

    #[test]
    fn filler_is_dropped_and_slots_are_keyed() {
        assert!(facts("Ana", "Hey! Thanks so much!").is_empty());
        let f = facts("Ana", "I live in Oslo now.");
        assert_eq!(f[0].key.as_deref(), Some("ana|lives_in"));
        assert!(!f[0].retract);
        assert_eq!(f[0].text, "Ana lives in Oslo now.");
        let f = facts("Ana", "I no longer live in Oslo.");
        assert_eq!((f[0].key.as_deref(), f[0].retract), (Some("ana|lives_in"), true));
        let like = facts("Ana", "I love sushi.");
        let hate = facts("Ana", "I hate sushi.");
        assert_eq!(
            like[0].key, hate[0].key,
            "likes and dislikes of one thing share a slot"
        );
        let f = facts("Ana", "My favorite color is green.");
        assert_eq!(f[0].key.as_deref(), Some("ana|favorite_color"));
    }
}
