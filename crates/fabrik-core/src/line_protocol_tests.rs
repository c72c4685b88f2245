//! Golden tests: `testdata/line_protocol.golden` holds `> input` / `< expected` pairs.
//! Regenerate after an intended change with `UPDATE_GOLDEN=1 cargo test -p fabrik-core`
//! and review the diff.

use super::*;

fn render(line: &Line<'_>) -> String {
    let tags: Vec<String> = line
        .tags
        .iter()
        .map(|(k, v)| format!("{k:?}={v:?}"))
        .collect();
    let fields: Vec<String> = line
        .fields
        .iter()
        .map(|(k, v)| match v {
            FieldValue::F64(x) => format!("{k:?}=float({x:?})"),
            FieldValue::I64(x) => format!("{k:?}=int({x})"),
            FieldValue::U64(x) => format!("{k:?}=uint({x})"),
            FieldValue::Bool(x) => format!("{k:?}=bool({x})"),
            FieldValue::Str(x) => format!("{k:?}=string({x:?})"),
        })
        .collect();
    let ts = line
        .timestamp
        .map_or_else(|| "none".to_owned(), |t| t.to_string());
    format!(
        "measurement={:?} tags=[{}] fields=[{}] time={ts}",
        line.measurement,
        tags.join(" "),
        fields.join(" ")
    )
}

fn run_one(input: &str) -> String {
    let mut line = Line::default();
    match parse_line(input, 1, &mut line) {
        Ok(()) => render(&line),
        Err(e) => format!("error: {e}"),
    }
}

#[test]
fn golden_line_protocol() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/line_protocol.golden");
    let golden = std::fs::read_to_string(path).expect("golden file");
    let mut regenerated = String::new();
    let mut failures = Vec::new();
    let mut input: Option<&str> = None;
    for raw in golden.lines() {
        if let Some(rest) = raw.strip_prefix("> ") {
            input = Some(rest);
            regenerated.push_str(raw);
            regenerated.push('\n');
        } else if let Some(expected) = raw.strip_prefix("< ") {
            let case = input.take().expect("`<` line without a `>` line");
            let actual = run_one(case);
            if actual != expected {
                failures.push(format!(
                    "input:    {case}\nexpected: {expected}\nactual:   {actual}"
                ));
            }
            regenerated.push_str("< ");
            regenerated.push_str(&actual);
            regenerated.push('\n');
        } else {
            regenerated.push_str(raw);
            regenerated.push('\n');
        }
    }
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, regenerated).expect("write golden");
        return;
    }
    assert!(
        failures.is_empty(),
        "golden mismatches:\n\n{}",
        failures.join("\n\n")
    );
}

#[test]
fn lines_skips_blank_and_comment_lines_and_numbers_from_one() {
    let body = "# header\n\ncpu v=1 1\r\n  \n  mem v=2\n";
    let got: Vec<(usize, &str)> = lines(body).collect();
    assert_eq!(got, vec![(3, "cpu v=1 1"), (5, "mem v=2")]);
}

/// `lines` finds newlines with `memchr`; it must cut exactly where `split('\n')` does,
/// including bodies without a final newline, empty ones and multi-byte characters.
#[test]
fn lines_cuts_where_split_on_newline_does() {
    let bodies = [
        "",
        "\n",
        "\n\n",
        "a v=1",
        "a v=1\n",
        "a v=1\nb v=2",
        "\r\n\ta v=1\r\n\r\n",
        "mëß,t=ü v=\"x\ny\" 1\n# c\nz v=2\n\n",
    ];
    for body in bodies {
        let expected: Vec<(usize, &str)> = body
            .split('\n')
            .enumerate()
            .filter_map(|(i, raw)| {
                let line = raw.strip_suffix('\r').unwrap_or(raw);
                let trimmed = line.trim_start_matches([' ', '\t']);
                (!trimmed.is_empty() && !trimmed.starts_with('#')).then_some((i + 1, trimmed))
            })
            .collect();
        assert_eq!(lines(body).collect::<Vec<_>>(), expected, "{body:?}");
    }
}

#[test]
fn parse_body_reports_the_failing_line_number() {
    let body = "cpu v=1\ncpu v=2\ncpu v=oops\n";
    let err = parse_body(body).expect_err("third line is bad");
    assert_eq!(err.line, 3);
    assert_eq!(err.column, 7);
    assert!(err.reason.contains("oops"), "{err}");
}

#[test]
fn column_counts_characters_not_bytes() {
    let err = parse_body("mëßung,tag=ü v=x").expect_err("bad float");
    assert_eq!(err.column, 16);
}

/// The write path parses a known series key once and then only the rest of each line; that
/// must give the same fields, timestamp and errors as parsing the whole line, for every golden
/// case whose key can be taken verbatim.
#[test]
fn parsing_after_a_cached_series_key_agrees_with_parsing_the_whole_line() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/line_protocol.golden");
    let golden = std::fs::read_to_string(path).expect("golden file");
    let mut checked = 0;
    for case in golden.lines().filter_map(|l| l.strip_prefix("> ")) {
        let Some(key_len) = series_key_len(case) else {
            assert!(
                case.contains('\\') || !case.contains(' '),
                "no key found in {case:?}"
            );
            continue;
        };
        let mut whole = Line::default();
        let whole_result = parse_line(case, 1, &mut whole);
        let mut rest = Line::default();
        let rest_result = parse_line_fields(case, key_len, 1, &mut rest);
        match (whole_result, rest_result) {
            (Ok(()), Ok(())) => {
                assert_eq!(whole.fields, rest.fields, "{case}");
                assert_eq!(whole.timestamp, rest.timestamp, "{case}");
            }
            (Err(w), Err(r)) => assert_eq!(w, r, "{case}"),
            // The whole line may fail in its key, which the cached path never re-reads.
            (Err(w), Ok(())) => assert!(w.column <= key_len + 1, "{case}: {w}"),
            (Ok(()), Err(r)) => panic!("{case}: only the split parse failed: {r}"),
        }
        checked += 1;
    }
    assert!(checked > 20, "only {checked} golden cases checked");
}

#[test]
fn series_key_len_stops_at_the_first_space_unless_escapes_come_first() {
    assert_eq!(series_key_len("m,a=b v=1 5"), Some(5));
    assert_eq!(series_key_len("m v=1"), Some(1));
    assert_eq!(series_key_len(r"m,a=b\ c v=1"), None);
    assert_eq!(series_key_len("m"), None);
}

/// What the layout fast path made of a line, checked against the general parser: whatever it
/// accepts, `parse_line_fields` must parse to the same keys, values and timestamp.
fn known_agrees(layout: &FieldLayout, case: &str) -> bool {
    let Some(key_len) = series_key_len(case) else {
        return false;
    };
    let mut values = Vec::new();
    let fast = parse_known_fields(case, key_len, layout, &mut values);
    let Some(timestamp) = fast else {
        return false;
    };
    let mut general = Line::default();
    parse_line_fields(case, key_len, 1, &mut general)
        .unwrap_or_else(|e| panic!("{case}: fast path accepted what the parser rejects: {e}"));
    assert_eq!(general.timestamp, timestamp, "{case}");
    let general_values: Vec<&FieldValue<'_>> = general.fields.iter().map(|(_, v)| v).collect();
    let fast_values: Vec<&FieldValue<'_>> = values.iter().collect();
    assert_eq!(general_values, fast_values, "{case}");
    assert!(layout.matches(&general), "{case}: keys or types differ");
    true
}

fn layout_of(text: &str) -> FieldLayout {
    let mut line = Line::default();
    parse_line(text, 1, &mut line).expect("template parses");
    FieldLayout::of_line(&line).expect("template makes a layout")
}

#[test]
fn the_layout_fast_path_takes_only_lines_the_parser_reads_the_same_way() {
    let layout = layout_of("m,t=1 a=1.5,b=2i,c=3u,d=t 100");
    assert_eq!(layout.len(), 4);
    let accepted = [
        "m,t=2 a=1.5,b=2i,c=3u,d=t 100",
        "m,t=2 a=-1e3,b=-2i,c=0u,d=FALSE",
        "m,t=2   a=.5,b=9223372036854775807i,c=18446744073709551615u,d=true   -7  ",
        "m,t=2 a=+1,b=0i,c=1u,d=F 1\t",
        "m,t=2 a=1,b=0i,c=1u,d=F -9223372036854775808",
        "m,t=2 a=1,b=0i,c=1u,d=F 9223372036854775807 \t ",
        "m,t=2 a=1,b=0i,c=1u,d=F 007",
        "m,t=2 a=1,b=0i,c=1u,d=F    ",
    ];
    for case in accepted {
        assert!(known_agrees(&layout, case), "not taken: {case}");
    }
    let declined = [
        "m,t=2 a=inf,b=2i,c=3u,d=t 100",
        "m,t=2 a=NaN,b=2i,c=3u,d=t",
        "m,t=2 a=-inf,b=2i,c=3u,d=t",
        "m,t=2 a=+NaN,b=2i,c=3u,d=t",
        "m,t=2 a=1e999,b=2i,c=3u,d=t",
        "m,t=2 a=1.5i,b=2i,c=3u,d=t",
        "m,t=2 a=1.5,b=2.0,c=3u,d=t",
        "m,t=2 a=1.5,b=2i,c=3i,d=t",
        "m,t=2 a=1.5,b=2i,c=3u,d=yes",
        "m,t=2 a=1.5,b=2i,c=3u",
        "m,t=2 a=1.5,b=2i,c=3u,d=t,e=1",
        "m,t=2 b=2i,a=1.5,c=3u,d=t",
        "m,t=2 a=1.5,a=2,b=2i,c=3u,d=t",
        "m,t=2 a=\"x\",b=2i,c=3u,d=t",
        "m,t=2 a=1.5,b=2i,c=3u,d=t 1x",
        "m,t=2 a=1.5,b=2i,c=3u,d=t 100 7",
        "m,t=2 a=1.5,b=2i,c=3u,d=t 100\t7",
        "m,t=2 a=1.5,b=2i,c=3u,d=t 9223372036854775808",
        "m,t=2 a=1.5,b=2i,c=3u,d=t -9223372036854775809",
        "m,t=2 a=1.5,b=2i,c=3u,d=t -",
        "m,t=2 a=1.5,b=2i,c=3u,d=t 1.5",
        "m,t=2 a=1.5,b=99999999999999999999i,c=3u,d=t",
        "m,t=2 a=1.5,b=2i,c=-3u,d=t",
        "m,t=2 a=,b=2i,c=3u,d=t",
        "m,t=2 ab=1.5,b=2i,c=3u,d=t",
        "m,t=2 a\\ =1.5,b=2i,c=3u,d=t",
        "m,t=2",
        "m,t=2 ",
    ];
    for case in declined {
        assert!(!known_agrees(&layout, case), "taken: {case}");
    }
}

#[test]
fn string_fields_and_escaped_keys_make_no_layout() {
    let mut line = Line::default();
    parse_line("m a=1,s=\"x\" 1", 1, &mut line).expect("parses");
    assert_eq!(FieldLayout::of_line(&line), None);
    parse_line("m a\\,b=1 1", 1, &mut line).expect("parses");
    assert_eq!(FieldLayout::of_line(&line), None);
}

/// Every golden case against the layout of every golden case: the fast path never accepts a
/// line the general parser reads differently or rejects.
#[test]
fn the_layout_fast_path_agrees_with_the_parser_on_every_golden_pair() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/line_protocol.golden");
    let golden = std::fs::read_to_string(path).expect("golden file");
    let cases: Vec<&str> = golden
        .lines()
        .filter_map(|l| l.strip_prefix("> "))
        .collect();
    let layouts: Vec<FieldLayout> = cases
        .iter()
        .filter_map(|case| {
            let mut line = Line::default();
            parse_line(case, 1, &mut line).ok()?;
            FieldLayout::of_line(&line)
        })
        .collect();
    assert!(layouts.len() > 10, "only {} layouts", layouts.len());
    let mut taken = 0;
    for layout in &layouts {
        for case in &cases {
            taken += usize::from(known_agrees(layout, case));
        }
    }
    assert!(
        taken >= layouts.len(),
        "the fast path took only {taken} pairs"
    );
}

#[test]
fn has_prefix_agrees_with_starts_with() {
    let hay = b"fuel_consumption=29.4,x=1";
    for len in 0..=hay.len() + 2 {
        for cut in 0..=hay.len() {
            let mut prefix: Vec<u8> = hay.iter().copied().take(len).collect();
            if len > hay.len() {
                prefix.extend(std::iter::repeat_n(b'x', len - hay.len()));
            }
            let hay = &hay[..cut];
            assert_eq!(
                has_prefix(hay, &prefix),
                hay.starts_with(&prefix),
                "{len} {cut}"
            );
            if let Some(last) = prefix.last_mut() {
                *last ^= 1;
                assert_eq!(
                    has_prefix(hay, &prefix),
                    hay.starts_with(&prefix),
                    "{len} {cut} flipped"
                );
            }
        }
    }
}

#[test]
fn short_decimal_agrees_with_str_parse_to_the_bit() {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    };
    let alphabet = b"0123456789.-+e";
    let mut taken = 0;
    for case in 0..400_000 {
        // Mostly well-formed decimals of 1 to 18 digits around a random point; some noise.
        let text: Vec<u8> = if case % 4 == 0 {
            (0..1 + next(8))
                .map(|_| alphabet[next(alphabet.len() as u64) as usize])
                .collect()
        } else {
            let digits = 1 + next(18) as usize;
            let point = next(digits as u64 + 2) as usize;
            let mut text = Vec::new();
            match next(4) {
                0 => text.push(b'-'),
                1 => text.push(b'+'),
                _ => {}
            }
            for i in 0..digits {
                if i == point {
                    text.push(b'.');
                }
                text.push(b'0' + next(10) as u8);
            }
            if point == digits {
                text.push(b'.');
            }
            text
        };
        let text = String::from_utf8(text).expect("ascii");
        let fast = short_decimal(text.as_bytes());
        let general = text.parse::<f64>().ok();
        match fast {
            Some(value) => {
                taken += 1;
                assert_eq!(Some(value.to_bits()), general.map(f64::to_bits), "{text:?}");
            }
            None => assert!(!short_decimal_shape(&text), "{text:?} declined"),
        }
    }
    assert!(taken > 150_000, "fast path taken {taken} times");
    for (text, want) in [
        ("-0", -0.0_f64),
        ("0.1", 0.1),
        ("56.57493", 56.57493),
        ("1.", 1.0),
    ] {
        assert_eq!(
            short_decimal(text.as_bytes()).map(f64::to_bits),
            Some(want.to_bits())
        );
    }
}

/// `[+-]digits[.digits]` with 1 to 15 digits: what `short_decimal` must take.
fn short_decimal_shape(text: &str) -> bool {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let digits = body.bytes().filter(u8::is_ascii_digit).count();
    let points = body.bytes().filter(|&b| b == b'.').count();
    (1..=15).contains(&digits) && points <= 1 && digits + points == body.len()
}
