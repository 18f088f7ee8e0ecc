//! The guard's word tables: number words, months, negation cues,
//! contractions, units, comparisons, antonyms, function words and
//! near-synonyms.

use std::sync::OnceLock;

use ahash::{AHashMap, AHashSet};

use super::rules::stem;
use super::GuardReason;

#[derive(Clone, Copy, Debug)]
pub(super) enum NumberWord {
    /// 0..=19
    Unit(u64),
    /// 20, 30, ... 90
    Tens(u64),
    /// hundred, thousand, million, billion
    Scale(u64),
    /// A word that stands alone: ordinals, "twice", "half", "dozen".
    Alone(&'static str),
}

/// What the guard knows about one word (one hash lookup per word).
#[derive(Clone, Copy, Default)]
pub(super) struct Lexeme {
    pub(super) number: Option<NumberWord>,
    pub(super) calendar: Option<&'static str>,
    pub(super) negation: bool,
    /// "dont" -> "do": a negation plus the verb it negates.
    pub(super) contraction: Option<&'static str>,
    pub(super) unit: Option<&'static str>,
}

pub(super) struct Tables {
    pub(super) lexicon: AHashMap<&'static str, Lexeme>,
    /// stem -> its opposites' stems
    pub(super) antonyms: AHashMap<&'static str, Vec<(&'static str, GuardReason)>>,
    pub(super) function_words: AHashSet<&'static str>,
    /// word -> its group in NEAR_SYNONYMS
    pub(super) near_synonyms: AHashMap<&'static str, usize>,
}

const UNITS: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];

const TENS: [&str; 8] = [
    "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

const ALONE: &[(&str, &str)] = &[
    ("first", "1"),
    ("second", "2"),
    ("third", "3"),
    ("fourth", "4"),
    ("fifth", "5"),
    ("sixth", "6"),
    ("seventh", "7"),
    ("eighth", "8"),
    ("ninth", "9"),
    ("tenth", "10"),
    ("eleventh", "11"),
    ("twelfth", "12"),
    ("twentieth", "20"),
    ("hundredth", "100"),
    ("once", "1"),
    ("twice", "2"),
    ("thrice", "3"),
    ("half", "1/2"),
    ("dozen", "12"),
    ("dozens", "12"),
];

const MONTHS: &[(&str, &str)] = &[
    ("january", "month1"),
    ("jan", "month1"),
    ("february", "month2"),
    ("feb", "month2"),
    ("march", "month3"),
    ("mar", "month3"),
    ("april", "month4"),
    ("apr", "month4"),
    ("june", "month6"),
    ("jun", "month6"),
    ("july", "month7"),
    ("jul", "month7"),
    ("august", "month8"),
    ("aug", "month8"),
    ("september", "month9"),
    ("sept", "month9"),
    ("sep", "month9"),
    ("october", "month10"),
    ("oct", "month10"),
    ("november", "month11"),
    ("nov", "month11"),
    ("december", "month12"),
    ("dec", "month12"),
    ("monday", "weekday1"),
    ("tuesday", "weekday2"),
    ("wednesday", "weekday3"),
    ("thursday", "weekday4"),
    ("friday", "weekday5"),
    ("saturday", "weekday6"),
    ("sunday", "weekday7"),
];

const NEGATIONS: &[&str] = &[
    "not", "no", "never", "none", "nothing", "nobody", "nowhere", "neither", "nor", "non", "nope",
];

const CONTRACTIONS: &[(&str, &str)] = &[
    ("dont", "do"),
    ("doesnt", "does"),
    ("didnt", "did"),
    ("isnt", "is"),
    ("arent", "are"),
    ("wasnt", "was"),
    ("werent", "were"),
    ("havent", "have"),
    ("hasnt", "has"),
    ("hadnt", "had"),
    ("wont", "will"),
    ("wouldnt", "would"),
    ("cant", "can"),
    ("couldnt", "could"),
    ("shouldnt", "should"),
    ("mustnt", "must"),
    ("neednt", "need"),
    ("mightnt", "might"),
    ("shant", "shall"),
    ("aint", "is"),
    ("cannot", "can"),
    ("without", "with"),
];

const UNIT_WORDS: &[(&str, &str)] = &[
    ("mg", "mg"),
    ("milligram", "mg"),
    ("milligrams", "mg"),
    ("g", "g"),
    ("gm", "g"),
    ("gram", "g"),
    ("grams", "g"),
    ("kg", "kg"),
    ("kgs", "kg"),
    ("kilo", "kg"),
    ("kilos", "kg"),
    ("kilogram", "kg"),
    ("kilograms", "kg"),
    ("mcg", "mcg"),
    ("ug", "mcg"),
    ("µg", "mcg"),
    ("microgram", "mcg"),
    ("micrograms", "mcg"),
    ("ml", "ml"),
    ("millilitre", "ml"),
    ("milliliter", "ml"),
    ("milliliters", "ml"),
    ("millilitres", "ml"),
    ("l", "l"),
    ("litre", "l"),
    ("liter", "l"),
    ("litres", "l"),
    ("liters", "l"),
    ("lb", "lb"),
    ("lbs", "lb"),
    ("pound", "lb"),
    ("pounds", "lb"),
    ("oz", "oz"),
    ("ounce", "oz"),
    ("ounces", "oz"),
    ("mm", "mm"),
    ("cm", "cm"),
    ("m", "m"),
    ("meter", "m"),
    ("meters", "m"),
    ("metre", "m"),
    ("metres", "m"),
    ("km", "km"),
    ("inch", "in"),
    ("inches", "in"),
    ("ft", "ft"),
    ("foot", "ft"),
    ("feet", "ft"),
    ("mile", "mi"),
    ("miles", "mi"),
    ("mi", "mi"),
    ("s", "s"),
    ("sec", "s"),
    ("secs", "s"),
    ("second", "s"),
    ("seconds", "s"),
    ("min", "min"),
    ("mins", "min"),
    ("minute", "min"),
    ("minutes", "min"),
    ("h", "h"),
    ("hr", "h"),
    ("hrs", "h"),
    ("hour", "h"),
    ("hours", "h"),
    ("day", "day"),
    ("days", "day"),
    ("week", "week"),
    ("weeks", "week"),
    ("wk", "week"),
    ("wks", "week"),
    ("month", "month"),
    ("months", "month"),
    ("mo", "month"),
    ("year", "year"),
    ("years", "year"),
    ("yr", "year"),
    ("yrs", "year"),
    ("percent", "%"),
    ("pct", "%"),
    ("degree", "deg"),
    ("degrees", "deg"),
    ("celsius", "c"),
    ("fahrenheit", "f"),
    ("dollar", "usd"),
    ("dollars", "usd"),
    ("usd", "usd"),
    ("euro", "eur"),
    ("euros", "eur"),
    ("eur", "eur"),
    ("gb", "gb"),
    ("mb", "mb"),
    ("kb", "kb"),
    ("tb", "tb"),
    ("ghz", "ghz"),
    ("mhz", "mhz"),
    ("am", "am"),
    ("pm", "pm"),
];

/// Pairs whose swap flips the answer. Comparisons first; both directions are
/// entered.
const COMPARISONS: &[(&str, &str)] = &[
    ("more", "less"),
    ("more", "fewer"),
    ("most", "least"),
    ("higher", "lower"),
    ("highest", "lowest"),
    ("high", "low"),
    ("greater", "smaller"),
    ("greater", "lesser"),
    ("increase", "decrease"),
    ("increase", "reduce"),
    ("raise", "lower"),
    ("rise", "fall"),
    ("gain", "lose"),
    ("gain", "loss"),
    ("bigger", "smaller"),
    ("biggest", "smallest"),
    ("big", "small"),
    ("larger", "smaller"),
    ("largest", "smallest"),
    ("large", "small"),
    ("longer", "shorter"),
    ("longest", "shortest"),
    ("long", "short"),
    ("faster", "slower"),
    ("fastest", "slowest"),
    ("fast", "slow"),
    ("older", "younger"),
    ("oldest", "youngest"),
    ("old", "young"),
    ("better", "worse"),
    ("best", "worst"),
    ("maximum", "minimum"),
    ("max", "min"),
    ("above", "below"),
    ("over", "under"),
    ("heavier", "lighter"),
    ("earlier", "later"),
    ("early", "late"),
    ("before", "after"),
    ("first", "last"),
    ("cheaper", "dearer"),
    ("stronger", "weaker"),
    ("strongest", "weakest"),
    ("warmer", "colder"),
    ("hotter", "colder"),
    ("easier", "harder"),
    ("easiest", "hardest"),
];

const ANTONYMS: &[(&str, &str)] = &[
    ("safe", "dangerous"),
    ("safe", "harmful"),
    ("true", "false"),
    ("right", "wrong"),
    ("correct", "wrong"),
    ("good", "bad"),
    ("positive", "negative"),
    ("male", "female"),
    ("man", "woman"),
    ("men", "women"),
    ("boy", "girl"),
    ("husband", "wife"),
    ("son", "daughter"),
    ("father", "mother"),
    ("brother", "sister"),
    ("adult", "child"),
    ("adults", "children"),
    ("adult", "kid"),
    ("hot", "cold"),
    ("warm", "cold"),
    ("start", "stop"),
    ("begin", "end"),
    ("open", "close"),
    ("open", "closed"),
    ("on", "off"),
    ("always", "never"),
    ("all", "none"),
    ("yes", "no"),
    ("left", "right"),
    ("upper", "lower"),
    ("top", "bottom"),
    ("front", "back"),
    ("inside", "outside"),
    ("internal", "external"),
    ("acute", "chronic"),
    ("benign", "malignant"),
    ("import", "export"),
    ("buy", "sell"),
    ("win", "lose"),
    ("accept", "reject"),
    ("add", "remove"),
    ("include", "exclude"),
    ("enable", "disable"),
    ("encrypt", "decrypt"),
    ("encode", "decode"),
    ("push", "pull"),
    ("send", "receive"),
    ("input", "output"),
    ("north", "south"),
    ("east", "west"),
    ("day", "night"),
    ("morning", "evening"),
    ("morning", "night"),
    ("yesterday", "tomorrow"),
    ("today", "tomorrow"),
    ("today", "yesterday"),
    ("past", "future"),
    ("present", "absent"),
    ("wet", "dry"),
    ("heavy", "light"),
    ("thick", "thin"),
    ("hard", "soft"),
    ("strong", "weak"),
    ("rich", "poor"),
    ("cheap", "expensive"),
    ("pass", "fail"),
    ("love", "hate"),
    ("like", "dislike"),
    ("agree", "disagree"),
    ("able", "unable"),
    ("allow", "forbid"),
    ("allow", "prohibit"),
    ("legal", "illegal"),
    ("possible", "impossible"),
    ("regular", "irregular"),
    ("relevant", "irrelevant"),
    ("responsible", "irresponsible"),
    ("reversible", "irreversible"),
    ("logical", "illogical"),
    ("mature", "immature"),
    ("mobile", "immobile"),
    ("patient", "impatient"),
    ("perfect", "imperfect"),
    ("proper", "improper"),
    ("polite", "impolite"),
    ("practical", "impractical"),
    ("active", "inactive"),
    ("adequate", "inadequate"),
    ("appropriate", "inappropriate"),
    ("complete", "incomplete"),
    ("correct", "incorrect"),
    ("curable", "incurable"),
    ("direct", "indirect"),
    ("effective", "ineffective"),
    ("efficient", "inefficient"),
    ("expensive", "inexpensive"),
    ("formal", "informal"),
    ("sufficient", "insufficient"),
    ("valid", "invalid"),
    ("visible", "invisible"),
    ("voluntary", "involuntary"),
    ("dependent", "independent"),
    ("consistent", "inconsistent"),
    ("capable", "incapable"),
    ("secure", "insecure"),
    ("stable", "unstable"),
    ("sensitive", "insensitive"),
    ("tolerant", "intolerant"),
    ("honest", "dishonest"),
    ("connect", "disconnect"),
    ("approve", "disapprove"),
    ("continue", "discontinue"),
    ("comfort", "discomfort"),
    ("advantage", "disadvantage"),
    ("appear", "disappear"),
    ("satisfied", "dissatisfied"),
    ("obey", "disobey"),
    ("trust", "distrust"),
    ("normal", "abnormal"),
    ("typical", "atypical"),
    ("symmetric", "asymmetric"),
    ("symptomatic", "asymptomatic"),
    ("sync", "async"),
    ("synchronous", "asynchronous"),
    ("success", "failure"),
    ("succeed", "fail"),
    ("win", "loss"),
    ("profit", "loss"),
    ("friend", "enemy"),
    ("light", "dark"),
    ("clean", "dirty"),
    ("full", "empty"),
    ("alive", "dead"),
    ("live", "die"),
    ("legal", "banned"),
    ("permitted", "forbidden"),
    ("useful", "useless"),
    ("include", "omit"),
    ("maximize", "minimize"),
    ("maximise", "minimise"),
    ("ascending", "descending"),
    ("asc", "desc"),
    ("upload", "download"),
    ("login", "logout"),
    ("inhale", "exhale"),
    ("vegan", "carnivore"),
    ("iphone", "android"),
];

/// Closed classes of function words: articles and determiners, prepositions
/// of place and relation, conjunctions of time and condition, present-tense
/// auxiliaries and modals, greetings and politeness. One of them swapped for
/// another ("engineer at Google" / "engineer of Google", "a webcam" / "your
/// webcam", "after you die" / "when you die") never changes what is asked;
/// pairs that do flip it (to/from, before/after) are antonyms, checked first.
/// Left out on purpose: personal pronouns (I/you ask different things),
/// past-tense auxiliaries (is/was), quantifiers (all/some), particles of
/// direction (in/out, up/down) and question words other than what/which.
const FUNCTION_WORDS: &[&str] = &[
    // articles, determiners, possessive determiners
    "a",
    "an",
    "the",
    "this",
    "that",
    "these",
    "those",
    "some",
    "any",
    "each",
    "every",
    "my",
    "your",
    "his",
    "her",
    "its",
    "our",
    "their",
    "what",
    "which",
    "whats",
    // prepositions
    "of",
    "in",
    "on",
    "at",
    "for",
    "to",
    "into",
    "onto",
    "by",
    "with",
    "about",
    "regarding",
    "from",
    "per",
    "via",
    "within",
    "across",
    "through",
    "towards",
    "toward",
    "upon",
    "than",
    // conjunctions of time and condition
    "when",
    "whenever",
    "after",
    "if",
    "as",
    // present-tense auxiliaries and modals
    "can",
    "could",
    "may",
    "might",
    "should",
    "would",
    "will",
    "shall",
    "do",
    "does",
    "is",
    "are",
    "am",
    "be",
    // greetings and politeness
    "please",
    "kindly",
    "hi",
    "hello",
    "hey",
];

/// Function words whose swap flips the request ("flights to Paris" /
/// "flights from Paris"). Checked only when that swap is the one difference:
/// in a rewording the same words play other roles ("lead to hearing loss" /
/// "hearing loss from flying").
pub(super) const OPPOSITE_FUNCTION_WORDS: &[(&str, &str)] = &[("to", "from"), ("for", "against")];

/// Groups of near-synonyms common in prompts (question frames, request verbs):
/// a swap within a group leaves the request the same when the prompts' embedding
/// similarity agrees ([`super::VOUCH`]); without a similarity, it is accepted.
const NEAR_SYNONYMS: &[&[&str]] = &[
    &["explain", "describe", "define", "clarify", "what", "whats"],
    &["give", "show", "tell", "provide", "list"],
    &["ok", "okay", "alright", "fine", "safe"],
    &["good", "great", "nice", "decent", "best", "top"],
    &["big", "large", "huge"],
    &["small", "little", "tiny"],
    &["fast", "quick", "quickly", "rapid"],
    &["buy", "purchase"],
    &["fix", "repair", "solve", "resolve"],
    &["start", "begin"],
    &["make", "create", "build", "write"],
    &["use", "utilize", "utilise"],
    &["help", "assist"],
    &["add", "upload", "attach", "insert", "put"],
    &["get", "have", "take", "obtain"],
];

pub(super) fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut lexicon: AHashMap<&'static str, Lexeme> = AHashMap::new();
        let mut number =
            |w: &'static str, n: NumberWord| lexicon.entry(w).or_default().number = Some(n);
        for (i, w) in UNITS.iter().enumerate() {
            number(w, NumberWord::Unit(i as u64));
        }
        for (i, w) in TENS.iter().enumerate() {
            number(w, NumberWord::Tens(20 + 10 * i as u64));
        }
        for (w, s) in [
            ("hundred", 100),
            ("thousand", 1000),
            ("million", 1_000_000),
            ("billion", 1_000_000_000),
        ] {
            number(w, NumberWord::Scale(s));
        }
        for (w, v) in ALONE {
            number(w, NumberWord::Alone(v));
        }
        for (w, v) in MONTHS {
            lexicon.entry(w).or_default().calendar = Some(v);
        }
        for w in NEGATIONS {
            lexicon.entry(w).or_default().negation = true;
        }
        for (w, base) in CONTRACTIONS {
            lexicon.entry(w).or_default().contraction = Some(base);
        }
        for (w, u) in UNIT_WORDS {
            lexicon.entry(w).or_default().unit = Some(u);
        }
        let mut antonyms = AHashMap::new();
        for (list, reason) in [
            (ANTONYMS, GuardReason::Antonym),
            (COMPARISONS, GuardReason::Comparison),
        ] {
            for (x, y) in list {
                let (sx, sy) = (stem(x), stem(y));
                if sx == sy {
                    continue;
                }
                antonyms
                    .entry(sx)
                    .or_insert_with(Vec::new)
                    .push((sy, reason));
                antonyms
                    .entry(sy)
                    .or_insert_with(Vec::new)
                    .push((sx, reason));
            }
        }
        Tables {
            lexicon,
            antonyms,
            function_words: FUNCTION_WORDS.iter().copied().collect(),
            near_synonyms: NEAR_SYNONYMS
                .iter()
                .enumerate()
                .flat_map(|(g, words)| words.iter().map(move |w| (*w, g)))
                .collect(),
        }
    })
}
