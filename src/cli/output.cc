#include "cli/output.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "common/error.h"

namespace coppice::cli {

using nlohmann::json;

Format parse_format(std::string_view name) {
  if (name == "default") return Format::standard;
  if (name == "table") return Format::table;
  if (name == "plain") return Format::plain;
  if (name == "csv") return Format::csv;
  if (name == "tsv") return Format::tsv;
  if (name == "json") return Format::json;
  if (name == "json-pretty") return Format::json_pretty;
  throw bad_request(fmt::format(
      "unknown output format '{}': use default, table, plain, csv, tsv, json or json-pretty",
      name));
}

std::string cell_text(const json& v) {
  if (v.is_null()) return "";
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

namespace {

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::string tsv_field(std::string s) {
  std::replace_if(
      s.begin(), s.end(), [](char c) { return c == '\t' || c == '\n' || c == '\r'; }, ' ');
  return s;
}

// Display width in terminal columns, counting each UTF-8 sequence as one.
size_t width(const std::string& s) {
  return static_cast<size_t>(std::count_if(
      s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

std::string pad(const std::string& s, size_t w) {
  return s + std::string(w > width(s) ? w - width(s) : 0, ' ');
}

std::string aligned(const std::vector<std::vector<std::string>>& rows, bool boxed) {
  if (rows.empty()) return "";
  std::vector<size_t> w(rows[0].size(), 0);
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size(); ++i) w[i] = std::max(w[i], width(r[i]));
  std::string out;
  auto rule = [&] {
    std::string l = "+";
    for (size_t x : w) l += std::string(x + 2, '-') + "+";
    return l + "\n";
  };
  if (boxed) out += rule();
  for (size_t ri = 0; ri < rows.size(); ++ri) {
    std::string line;
    for (size_t i = 0; i < rows[ri].size(); ++i) {
      bool last = i + 1 == rows[ri].size();
      if (boxed)
        line += (i == 0 ? "| " : " | ") + pad(rows[ri][i], w[i]) + (last ? " |" : "");
      else
        line += last ? rows[ri][i] : pad(rows[ri][i], w[i]) + "  ";
    }
    out += line + "\n";
    if (boxed && ri == 0) out += rule();
  }
  if (boxed) out += rule();
  return out;
}

}  // namespace

std::string render(const std::vector<json>& records, const std::vector<Column>& columns,
                   Format format) {
  if (format == Format::json) {
    std::string out;
    for (const auto& r : records) out += r.dump() + "\n";
    return out;
  }
  if (format == Format::json_pretty) return json(records).dump(2) + "\n";
  std::vector<std::vector<std::string>> rows;
  bool header = format != Format::plain;
  if (header) {
    rows.emplace_back();
    for (const auto& c : columns) rows.back().push_back(c.header);
  }
  for (const auto& r : records) {
    rows.emplace_back();
    for (const auto& c : columns) {
      bool null = !r.contains(c.key) || r[c.key].is_null();
      std::string v = null ? "" : cell_text(r[c.key]);
      if (null &&
          (format == Format::standard || format == Format::table || format == Format::plain))
        v = "-";
      rows.back().push_back(std::move(v));
    }
  }
  if (format == Format::csv || format == Format::tsv) {
    std::string out;
    for (const auto& row : rows) {
      std::string line;
      for (size_t i = 0; i < row.size(); ++i) {
        if (i) line += format == Format::csv ? "," : "\t";
        line += format == Format::csv ? csv_field(row[i]) : tsv_field(row[i]);
      }
      out += line + (format == Format::csv ? "\r\n" : "\n");
    }
    return out;
  }
  return aligned(rows, format == Format::table);
}

void write_all(std::string_view data, int fd) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw sys_error(fd == 1 ? "cannot write to stdout" : "cannot write output");
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
}

}  // namespace coppice::cli
