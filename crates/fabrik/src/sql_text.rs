//! SQL expressions written by users (an alert rule's `value` and `filter`, a pipeline's
//! `filter`) as the queries embed them: the one wrapping, and the check that the text is
//! exactly one expression inside it; and names embedded as string literals or identifiers.

/// `name` as an SQL identifier (a table or column name): double-quoted, so its case and any
/// character in it are kept, a double quote inside doubled.
pub(crate) fn identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as an SQL string literal: quoted, a quote inside doubled.
pub(crate) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `text` as a query embeds it: between parentheses, on lines of its own, so a scalar
/// subquery is one expression too and a trailing `--` comment ends with its line.
pub(crate) fn embedded(text: &str) -> String {
    format!("(\n{text}\n)")
}

/// Whether `text` is exactly one SQL expression once [`embedded`]. A typo is named when the
/// definition is checked rather than on every read, and nothing in it (`1) FROM other`,
/// `true) OR (1=1`) can change the shape of the query around it. Positions in messages are
/// the text's own.
pub(crate) fn one_expression(text: &str) -> Result<(), String> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if text.trim().is_empty() {
        return Err("must be one SQL expression; it is empty".into());
    }
    let dialect = GenericDialect {};
    let not_one = |e: &dyn std::fmt::Display| format!("`{text}` is not a SQL expression: {e}");
    // Every parenthesis closes one the text opened: a `)` that closes the embedding's
    // would let the rest of the text stand outside it, as one expression all the same.
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|e| not_one(&e))?;
    let mut open = Vec::new();
    for token in &tokens {
        match token.token {
            Token::LParen => open.push(token.span.start),
            Token::RParen if open.pop().is_none() => {
                let at = token.span.start;
                return Err(format!(
                    "`{text}` must be one SQL expression; the `)` at line {}, column {} \
                     closes a parenthesis it did not open",
                    at.line, at.column
                ));
            }
            _ => {}
        }
    }
    if let Some(at) = open.pop() {
        return Err(format!(
            "`{text}` must be one SQL expression; the `(` at line {}, column {} is not closed",
            at.line, at.column
        ));
    }
    // Parsed as embedded, where a scalar subquery is one expression and a trailing `--`
    // comment ends with its line. A parse error is reported from the text alone when that
    // fails too, so its line and column are the text's own.
    let embedded = embedded(text);
    let parsed = Parser::new(&dialect)
        .try_with_sql(&embedded)
        .and_then(|mut parser| {
            parser.parse_expr()?;
            Ok(parser.peek_token().token)
        });
    match parsed {
        Ok(Token::EOF) => {}
        Ok(next) => {
            return Err(format!(
                "`{text}` must be one SQL expression; `{next}` follows a complete one"
            ));
        }
        Err(embedded_error) => {
            let alone = Parser::new(&dialect)
                .try_with_sql(text)
                .and_then(|mut parser| parser.parse_expr());
            return Err(match alone {
                Err(e) => not_one(&e),
                Ok(_) => not_one(&embedded_error),
            });
        }
    }
    Ok(())
}
