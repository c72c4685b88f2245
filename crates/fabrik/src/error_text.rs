//! How a command's failure is printed: the error and its causes, each said once.

/// The error and its causes joined by `: `, leaving out a cause whose text an earlier one
/// already contains: many error types print their source in their own message, and `{:#}`
/// would then repeat it ("...: No such file or directory (os error 2): No such file or
/// directory (os error 2)").
pub(crate) fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::describe;

    /// Like most error types here: prints its source and also reports it as the source.
    #[derive(Debug)]
    struct Unreadable {
        path: String,
        source: std::io::Error,
    }

    impl std::fmt::Display for Unreadable {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}: {}", self.path, self.source)
        }
    }

    impl std::error::Error for Unreadable {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_already_in_its_parents_message_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(Unreadable {
            path: "labels.json".into(),
            source: io,
        })
        .context("NAB evaluation of /data");
        assert_eq!(
            describe(&error),
            "NAB evaluation of /data: labels.json: no such file"
        );
        assert_eq!(
            format!("{error:#}"),
            "NAB evaluation of /data: labels.json: no such file: no such file",
            "the plain chain repeats it"
        );
    }

    #[test]
    fn causes_that_add_something_are_all_said() {
        let error = anyhow::anyhow!("connection refused")
            .context("POST /api/v1/write")
            .context("write lines.txt");
        assert_eq!(
            describe(&error),
            "write lines.txt: POST /api/v1/write: connection refused"
        );
    }
}
