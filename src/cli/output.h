// Output formats of every listing command (`-f/--format`):
//   default      aligned columns under a header (missing/null cells shown as "-")
//   table        the same inside a box drawn with ASCII rules
//   plain        aligned columns, no header
//   csv, tsv     a header line, then one line per record (RFC 4180 quoting for csv)
//   json         one JSON object per line (the whole record, every field the server sent)
//   json-pretty  one indented JSON array of the records
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace coppice::cli {

enum class Format { standard, table, plain, csv, tsv, json, json_pretty };

// Error 400 naming the accepted values on anything else.
Format parse_format(std::string_view name);

struct Column {
  std::string key;     // field of the record (a top-level key)
  std::string header;  // shown in default/table/csv/tsv
};

std::string render(const std::vector<nlohmann::json>& records, const std::vector<Column>& columns,
                   Format format);

// The text of one cell: strings as they are, null as "", other values as JSON.
std::string cell_text(const nlohmann::json& v);

// Writes all of `data` to a file descriptor (stdout by default); Error on failure.
void write_all(std::string_view data, int fd = 1);

}  // namespace coppice::cli
