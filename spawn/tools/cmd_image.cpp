// kiln-spawn image-*: the image store.
#include "context.h"
#include "kiln/spawn/images.h"

namespace kiln::spawn::cli {

namespace {

Json to_json(const Image& i) {
  return {{"id", i.id},
          {"name", i.name},
          {"disk_format", i.disk_format},
          {"size", i.size},
          {"virtual_size", i.virtual_size},
          {"checksum", i.digest},
          {"checksum_algo", "xxh3-128"},
          {"created_at", i.created_at}};
}

int image_create(Context& c) {
  c.args.max_positional(2);
  ImageStore images(c.store());
  Image i = images.create(c.args.positional(0, "NAME"), c.args.positional(1, "FILE"),
                          c.args.get_or("--disk-format", ""), c.progress);
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

}  // namespace

CommandTable image_commands() {
  return {
      {"image-create",
       "NAME FILE [--disk-format qcow2|raw]",
       {{"--disk-format", kValue}},
       image_create},
      {"image-list", "", {}, image_list},
      {"image-show", "IMAGE", {}, image_show},
      {"image-delete", "IMAGE...", {}, image_delete},
  };
}

}  // namespace kiln::spawn::cli
