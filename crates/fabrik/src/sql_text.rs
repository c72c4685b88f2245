//! SQL expressions written by users (an alert rule's `value` and `filter`, a pipeline's
//! `filter`) as the queries embed them: the one wrapping, and the check that the text is
//! exactly one expression inside it.

/// `text` as a query embeds it: between parentheses, on lines of its own, so a scalar
/// subquery is one expression too and a trailing `--` comment ends with its line.
pub(crate) fn embedded(text: &str) -> String {
    format!("(\n{text}\n)")
}

/// Whether `text` is exactly one SQL expression once [`embedded`]. A typo is named when the
/// definition is checked rather than on every read, and nothing after the expression
/// (`1) FROM other`) can change the shape of the query around it.
pub(crate) fn one_expression(text: &str) -> Result<(), String> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    use datafusion::sql::sqlparser::tokenizer::Token;
    if text.trim().is_empty() {
        return Err("must be one SQL expression; it is empty".into());
    }
    let dialect = GenericDialect {};
    let embedded = embedded(text);
    let mut parser = Parser::new(&dialect)
        .try_with_sql(&embedded)
        .map_err(|e| format!("`{text}` is not a SQL expression: {e}"))?;
    parser
        .parse_expr()
        .map_err(|e| format!("`{text}` is not a SQL expression: {e}"))?;
    let next = parser.peek_token();
    if next.token != Token::EOF {
        return Err(format!(
            "`{text}` must be one SQL expression; `{}` follows a complete one",
            next.token
        ));
    }
    Ok(())
}
