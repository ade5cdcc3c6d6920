//! Splitting a manifest file into documents, each parsed into a
//! `serde_json::Value`.
//!
//! YAML files are split on document-start lines (`---` alone on a line,
//! optionally followed by a comment), the way kubectl's YAML reader does,
//! and every document is parsed on its own: a syntax error in one document
//! does not hide the others, and document numbers are exact. JSON files are
//! read as a stream of concatenated JSON values.

use serde_json::Value;
use serde_json::value::RawValue;

/// One document of a file, or why it could not be parsed.
#[derive(Debug)]
pub(super) struct Document {
    /// 1-based ordinal among the file's non-empty documents.
    pub index: usize,
    /// 1-based line of the file where the document starts.
    pub line: usize,
    pub value: Result<Value, String>,
}

/// Parses YAML text (possibly several documents) into values. Empty and
/// null documents (only comments, `~`) are skipped and not counted.
pub(super) fn yaml_documents(text: &str) -> Vec<Document> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let options = serde_saphyr::options! { with_snippet: false };
    let mut docs = Vec::new();
    for (first_line, chunk) in split_yaml(text) {
        if is_blank_document(chunk) {
            continue;
        }
        let value =
            serde_saphyr::from_str_with_options::<Value>(chunk, options.clone()).map_err(|_| {
                // Parse again behind blank lines, so that every line number
                // in the message (some are part of its text) is the file's.
                // Only on error: this costs as much as the lines before.
                let padded = "\n".repeat(first_line) + chunk;
                match serde_saphyr::from_str_with_options::<Value>(&padded, options.clone()) {
                    Err(e) => e.render_with_options(serde_saphyr::render_options! {
                        formatter: &serde_saphyr::UserMessageFormatter,
                        snippets: serde_saphyr::SnippetMode::Off,
                    }),
                    Ok(_) => "invalid YAML".to_owned(),
                }
            });
        if matches!(value, Ok(Value::Null)) {
            continue;
        }
        docs.push(Document {
            index: docs.len() + 1,
            line: first_line + 1,
            value,
        });
    }
    docs
}

/// One JSON document of a file, left as text for the collector to
/// deserialize (see `Collector::add_json`), or why it could not be parsed.
#[derive(Debug)]
pub(super) struct JsonDocument<'a> {
    /// 1-based ordinal among the file's non-null documents.
    pub index: usize,
    /// 1-based line of the file where the document starts.
    pub line: usize,
    pub value: Result<&'a RawValue, String>,
}

/// Splits a stream of JSON values (usually one). A syntax error ends the
/// stream: JSON has no separator to resynchronise on.
pub(super) fn json_documents(bytes: &[u8]) -> Vec<JsonDocument<'_>> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut docs = Vec::new();
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<&RawValue>();
    let mut lines = LineCounter::default();
    loop {
        let offset = stream.byte_offset();
        let Some(next) = stream.next() else { break };
        let line = 1 + lines.line_of(bytes, offset);
        match next {
            Ok(raw) if raw.get() == "null" => continue,
            Ok(raw) => docs.push(JsonDocument {
                index: docs.len() + 1,
                line,
                value: Ok(raw),
            }),
            Err(e) => {
                docs.push(JsonDocument {
                    index: docs.len() + 1,
                    line,
                    value: Err(format!("invalid JSON: {e}")),
                });
                break;
            }
        }
    }
    docs
}

/// Line numbers of increasing offsets, counting each newline once (a file
/// of many concatenated documents must not be rescanned from its start
/// for each).
#[derive(Default)]
struct LineCounter {
    offset: usize,
    newlines: usize,
}

impl LineCounter {
    /// Number of newlines before `offset`, skipping leading whitespace
    /// (which belongs to no document).
    fn line_of(&mut self, bytes: &[u8], offset: usize) -> usize {
        let rest = &bytes[offset.min(bytes.len())..];
        let skipped = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
        let end = (offset + skipped).min(bytes.len()).max(self.offset);
        self.newlines += bytes[self.offset..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        self.offset = end;
        self.newlines
    }
}

/// Splits YAML text at document-start lines. Returns each chunk with the
/// 0-based line it starts on; the `---` line stays at the head of the chunk
/// it opens (so the parser sees an explicit document start).
fn split_yaml(text: &str) -> Vec<(usize, &str)> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 0;
    let mut offset = 0;
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        if offset != 0 && is_document_start(line) {
            chunks.push((start_line, &text[start..offset]));
            start = offset;
            start_line = line_no;
        }
        offset += line.len();
    }
    chunks.push((start_line, &text[start..]));
    chunks
}

/// `---` at column 0 followed by nothing, whitespace or content after a
/// space (`--- {a: 1}`); `---x` is a plain scalar, not a marker.
fn is_document_start(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// True for a document that holds nothing but markers, comments and blanks.
fn is_blank_document(chunk: &str) -> bool {
    chunk.lines().all(|line| {
        let line = line.trim();
        let line = line.strip_prefix("---").map(str::trim).unwrap_or(line);
        let line = line.strip_prefix("...").map(str::trim).unwrap_or(line);
        line.is_empty() || line.starts_with('#')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_marker_lines_only() {
        let text = "a: 1\n---\nb: 2\n--- # c\nc: ---x\n---x: 3\n";
        let chunks = split_yaml(text);
        assert_eq!(
            chunks,
            vec![
                (0, "a: 1\n"),
                (1, "---\nb: 2\n"),
                (3, "--- # c\nc: ---x\n---x: 3\n")
            ]
        );
    }

    #[test]
    fn skips_empty_documents_and_numbers_the_rest() {
        let text = "# header\n---\n---\na: 1\n---\n~\n---\nb: [1, 2]\n...\n";
        let docs = yaml_documents(text);
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].index, docs[0].line), (1, 3));
        assert_eq!(docs[0].value.as_ref().unwrap()["a"], 1);
        assert_eq!((docs[1].index, docs[1].line), (2, 7));
        assert_eq!(docs[1].value.as_ref().unwrap()["b"][1], 2);
    }

    #[test]
    fn syntax_error_stays_in_its_document_with_file_line_numbers() {
        let text = "a: 1\n---\nb: [1,\n  c: }\n---\nd: 4\n";
        let docs = yaml_documents(text);
        assert_eq!(docs.len(), 3);
        assert!(docs[0].value.is_ok());
        let err = docs[1].value.as_ref().unwrap_err();
        // Lines are the file's, not the document's: the `[` opened on
        // line 3 of the file (line 2 of the document).
        assert!(err.contains("line 3, column 4"), "{err}");
        assert_eq!(docs[2].value.as_ref().unwrap()["d"], 4);
    }

    #[test]
    fn crlf_and_bom_are_accepted() {
        let text = "\u{feff}a: 1\r\n---\r\nb: 2\r\n";
        let docs = yaml_documents(text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].value.as_ref().unwrap()["b"], 2);
    }

    #[test]
    fn json_stream() {
        let docs = json_documents(b"{\"a\": 1}\n\n{\"b\": 2}\n{\"c\": ");
        assert_eq!(docs.len(), 3);
        assert_eq!((docs[0].index, docs[0].line), (1, 1));
        assert_eq!((docs[1].index, docs[1].line), (2, 3));
        assert_eq!(docs[1].value.as_ref().unwrap().get(), "{\"b\": 2}");
        assert!(docs[2].value.as_ref().unwrap_err().contains("invalid JSON"));
    }
}
