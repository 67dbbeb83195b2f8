// kiln-spawn image-*: the image store.
#include "build.h"
#include "context.h"
#include "kiln/block/device.h"
#include "kiln/spawn/images.h"

namespace kiln::spawn::cli {

namespace {

// Glance's image-show: its core attributes, then the properties as attributes of their own
// (their names cannot collide: parse_property() refuses the reserved ones).
Json to_json(const Image& i) {
  Json j = {{"id", i.id},
            {"name", i.name},
            {"status", "active"},
            {"disk_format", i.disk_format},
            {"container_format", "bare"},
            {"size", i.size},
            {"virtual_size", i.virtual_size},
            {"checksum", i.checksum.empty() ? Json() : Json(i.checksum)},
            {"os_hash_algo", i.os_hash_algo.empty() ? Json() : Json(i.os_hash_algo)},
            {"os_hash_value", i.os_hash_value.empty() ? Json() : Json(i.os_hash_value)},
            {"min_disk", i.min_disk},
            {"min_ram", i.min_ram},
            {"kiln_digest", i.digest},
            {"created_at", i.created_at}};
  for (const auto& [k, v] : i.properties) j[k] = v;
  return j;
}

int image_create(Context& c) {
  c.args.max_positional(2);
  const std::string name = c.args.positional(0, "NAME");
  const auto url = c.args.get("--url");
  if (url && c.args.positional().size() > 1) throw invalid("give FILE or --url, not both");
  ImageOptions opt;
  opt.disk_format = c.args.get_or("--disk-format", "");
  opt.checksum = c.args.get_or("--checksum", "");
  opt.min_disk = static_cast<int64_t>(c.args.number("--min-disk", 0, 1 << 20).value_or(0));
  opt.min_ram = static_cast<int64_t>(c.args.number("--min-ram", 0, 1 << 30).value_or(0));
  for (const auto& p : c.args.all("--property")) {
    auto [k, v] = parse_property(p);
    opt.properties.insert_or_assign(k, v);
  }
  if (auto m = c.args.get("--max-size")) {
    try {
      opt.max_bytes = block::parse_size(*m);
    } catch (const std::exception& e) {
      throw invalid("--max-size: " + std::string(e.what()));
    }
    if (opt.max_bytes == 0 || opt.max_bytes > kMaxImageBytes)
      throw invalid("--max-size must be between 1 byte and 4 TiB");
  }
  opt.progress = c.progress;
  opt.interrupted = [] { return interrupted(); };
  ImageStore images(c.store());
  Image i = url ? images.create_from_url(name, *url, opt)
                : images.create(name, c.args.positional(1, "FILE"), opt);
  c.show(to_json(i));
  return 0;
}

int image_list(Context& c) {
  c.args.max_positional(0);
  std::vector<Json> a;
  for (const auto& i : c.store().images()) a.push_back(to_json(i));
  c.list(a, {"id", "name", "disk_format", "size", "virtual_size", "checksum"});
  return 0;
}

int image_show(Context& c) {
  c.args.max_positional(1);
  c.show(to_json(ImageStore(c.store()).get(c.args.positional(0, "IMAGE"))));
  return 0;
}

int image_delete(Context& c) {
  c.args.positional(0, "IMAGE");
  ImageStore images(c.store());
  for (const auto& r : c.args.positional()) images.remove(r);
  return 0;
}

// A registered image's file put into this host's image store (several hosts, one store).
int image_cache(Context& c) {
  c.args.max_positional(2);
  const std::string ref = c.args.positional(0, "IMAGE");
  ImageStore images(c.store());
  images.cache(ref, c.args.positional(1, "FILE"), c.progress);
  c.show(to_json(images.get(ref)));
  return 0;
}

}  // namespace

Json image_json(const Image& image) { return to_json(image); }

CommandTable image_commands() {
  return {
      {"image-create",
       "NAME (FILE | --url URL) [--checksum sha256:HEX|md5:HEX] [--disk-format qcow2|raw] "
       "[--min-disk GiB] [--min-ram MiB] [--property KEY=VALUE]... [--max-size SIZE]",
       {{"--disk-format", kValue},
        {"--url", kValue},
        {"--checksum", kValue},
        {"--min-disk", kValue},
        {"--min-ram", kValue},
        {"--property", kValue},
        {"--max-size", kValue}},
       image_create},
      {"image-list", "", {}, image_list},
      {"image-show", "IMAGE", {}, image_show},
      {"image-delete", "IMAGE...", {}, image_delete},
      {"image-cache", "IMAGE FILE", {}, image_cache},
  };
}

}  // namespace kiln::spawn::cli
