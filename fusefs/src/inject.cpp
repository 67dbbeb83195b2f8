// Injection: the operations of `kiln-fs inject`, applied in one open/close of the guest
// filesystem. Writes stay in the io_manager's buffer until every operation succeeded.
#include "kiln/fs/inject.h"

#include <cstdio>
#include <limits>

#include "guest.h"
#include "text_edit.h"

namespace kiln::fs {
namespace {

constexpr uint64_t kConfigLimit = 16u << 20;      // /etc/passwd, shadow, hosts, keys
constexpr uint64_t kMaxInjectBytes = 1ull << 30;  // everything one call may write

std::string octal(uint32_t mode) {
  char b[16];
  std::snprintf(b, sizeof b, "%04o", mode);
  return b;
}

// Writes go through links only with --follow-symlinks, and then only through links that root
// owns (kTrusted): a link a guest user made must not choose what root writes.
Follow follow_of(const InjectOptions& o) {
  return o.follow_symlinks ? Follow::kTrusted : Follow::kNever;
}

// The file at `path` for reading (links followed inside the guest), or nullopt if missing.
std::optional<std::string> read_config(Guest& g, const std::string& path) {
  ext2_ino_t ino = g.lookup(path, Follow::kAll);
  if (ino == 0) return std::nullopt;
  ext2_inode_large inode = g.read_inode(ino);
  if (!LINUX_S_ISREG(inode.i_mode))
    throw Error(Reason::kInvalidArgument, path + " in the guest is not a regular file");
  return g.read_file(ino, path, kConfigLimit);
}

// Rewrites an existing file or creates it (parents too). A symbolic link anywhere in the path
// is followed only with follow_symlinks, and then the file it ends at is written.
void write_config(Guest& g, const std::string& path, const std::string& content, const Attrs& attrs,
                  const InjectOptions& o) {
  const Follow f = follow_of(o);
  Guest::Resolved r = g.resolve(path, f);
  if (r.parent_missing) {
    g.parent_of(path, f, true);
    r = g.resolve(path, f);
    if (r.parent_missing)
      throw Error(Reason::kPermission, path + ": cannot create its parent directories");
  }
  if (r.ino != 0 && LINUX_S_ISLNK(g.read_inode(r.ino).i_mode))
    throw Error(Reason::kPermission, path + ": refusing to write through the symbolic link " +
                                         path + " -> " + g.read_link(r.ino, path) +
                                         " (allow it with --follow-symlinks)");
  g.write_file(Guest::Parent{r.dir, r.name}, path, content, attrs);
}

// .ssh and authorized_keys are handed over to the user (owner, 0700/0600): they must be the
// user's own names, never a link to somewhere else, whatever --follow-symlinks says.
void refuse_link(Guest& g, ext2_ino_t ino, const std::string& path) {
  throw Error(Reason::kPermission,
              "refusing to write through the symbolic link " + path + " -> " +
                  g.read_link(ino, path) +
                  " (.ssh and authorized_keys are given to the user, so they are never written "
                  "through a link)");
}

// Errors here are prefixed with the operation by apply().
void do_ssh_key(Guest& g, const Operation& op, const InjectOptions& o) {
  std::optional<std::string> passwd = read_config(g, "/etc/passwd");
  if (!passwd) throw Error(Reason::kNotFound, "the guest has no /etc/passwd");
  std::optional<PasswdEntry> user = find_passwd_entry(*passwd, op.user);
  if (!user) throw Error(Reason::kNotFound, "no user '" + op.user + "' in the guest's /etc/passwd");
  const Follow f = follow_of(o);
  const Attrs theirs{0700, user->uid, user->gid};
  std::string home = user->home;
  while (home.size() > 1 && home.back() == '/') home.pop_back();
  // A missing home is made for the user (0700), its parents for root (0755).
  if (home != "/" && g.lookup(home, f == Follow::kNever ? Follow::kParents : f) == 0)
    g.make_dirs(home, theirs, f);
  const ext2_ino_t home_ino = g.lookup(home, f);
  if (home_ino != 0 && LINUX_S_ISLNK(g.read_inode(home_ino).i_mode))  // only with kNever
    throw Error(Reason::kPermission, "refusing to follow the symbolic link " + home + " -> " +
                                         g.read_link(home_ino, home) +
                                         " (allow it with --follow-symlinks)");
  if (home_ino == 0 || !LINUX_S_ISDIR(g.read_inode(home_ino).i_mode))
    throw Error(Reason::kInvalidArgument, "the home directory " + home + " is not a directory");

  const std::string ssh_dir = (home == "/" ? "" : home) + "/.ssh";
  ext2_ino_t ssh = g.child(home_ino, ".ssh", ssh_dir);
  if (ssh == 0) {
    ssh = g.make_dir(home_ino, ".ssh", ssh_dir, theirs);
  } else {
    ext2_inode_large inode = g.read_inode(ssh);
    if (LINUX_S_ISLNK(inode.i_mode)) refuse_link(g, ssh, ssh_dir);
    if (!LINUX_S_ISDIR(inode.i_mode))
      throw Error(Reason::kExists, ssh_dir + " exists and is not a directory");
    g.check_parent(ssh, home_ino, ssh_dir);
    g.set_attrs(ssh, theirs);
  }

  const std::string keys_path = ssh_dir + "/authorized_keys";
  std::string current;
  if (ext2_ino_t existing = g.child(ssh, "authorized_keys", keys_path); existing != 0) {
    ext2_inode_large inode = g.read_inode(existing);
    if (LINUX_S_ISLNK(inode.i_mode)) refuse_link(g, existing, keys_path);
    if (!LINUX_S_ISREG(inode.i_mode))
      throw Error(Reason::kInvalidArgument, keys_path + " is not a regular file");
    // The keys already there are kept. From a file with other names that the user does not
    // own (say, a hard link to /etc/shadow), that would copy someone else's data into a file
    // the user gets: refused.
    if (inode.i_links_count > 1 && inode_uid(inode) != user->uid)
      throw Error(Reason::kPermission,
                  keys_path + " has " + std::to_string(inode.i_links_count) +
                      " names (hard links) and belongs to uid " + std::to_string(inode_uid(inode)) +
                      ", not to " + op.user + ": refusing to copy its content into " + op.user +
                      "'s file (remove it first, e.g. with --delete)");
    current = g.read_file(existing, keys_path, kConfigLimit);
  }
  // A file with other names gets a new inode here (Guest::write_file): they keep theirs.
  g.write_file(Guest::Parent{ssh, "authorized_keys"}, keys_path, append_keys(current, op.data),
               Attrs{0600, user->uid, user->gid});
}

void do_hostname(Guest& g, const Operation& op, const InjectOptions& o) {
  write_config(g, "/etc/hostname", op.data + "\n", Attrs{}, o);
  std::optional<std::string> hosts = read_config(g, "/etc/hosts");
  std::string text = hosts ? *hosts : "127.0.0.1\tlocalhost\n";
  write_config(g, "/etc/hosts", set_hosts_name(text, op.data), Attrs{}, o);
}

void do_password(Guest& g, const Operation& op, const InjectOptions& o) {
  std::optional<std::string> shadow = read_config(g, "/etc/shadow");
  if (!shadow) throw Error(Reason::kNotFound, "the guest has no /etc/shadow");
  std::optional<std::string> edited = set_shadow_hash(*shadow, op.user, op.data);
  if (!edited)
    throw Error(Reason::kNotFound, "no user '" + op.user + "' in the guest's /etc/shadow");
  write_config(g, "/etc/shadow", *edited, Attrs{}, o);
}

void apply_one(Guest& g, const Operation& op, const InjectOptions& o) {
  const Follow f = follow_of(o);
  const Attrs attrs{op.mode, op.uid, op.gid};
  switch (op.kind) {
    case OpKind::kSshKey:
      do_ssh_key(g, op, o);
      break;
    case OpKind::kHostname:
      do_hostname(g, op, o);
      break;
    case OpKind::kFile:
      write_config(g, op.path, op.data, attrs, o);
      break;
    case OpKind::kMkdir:
      g.make_dirs(op.path, attrs, f);
      break;
    case OpKind::kDelete:
      g.remove(op.path, f);
      break;
    case OpKind::kPassword:
      do_password(g, op, o);
      break;
  }
}

}  // namespace

Operation Operation::ssh_key(std::string user, std::string key) {
  Operation op;
  op.kind = OpKind::kSshKey;
  op.user = std::move(user);
  op.data = std::move(key);
  return op;
}

Operation Operation::hostname(std::string name) {
  Operation op;
  op.kind = OpKind::kHostname;
  op.data = std::move(name);
  return op;
}

Operation Operation::file(std::string path, std::string content, std::optional<uint32_t> mode,
                          std::optional<uint32_t> uid, std::optional<uint32_t> gid) {
  Operation op;
  op.kind = OpKind::kFile;
  op.path = std::move(path);
  op.data = std::move(content);
  op.mode = mode;
  op.uid = uid;
  op.gid = gid;
  return op;
}

Operation Operation::mkdir(std::string path, std::optional<uint32_t> mode,
                           std::optional<uint32_t> uid, std::optional<uint32_t> gid) {
  Operation op;
  op.kind = OpKind::kMkdir;
  op.path = std::move(path);
  op.mode = mode;
  op.uid = uid;
  op.gid = gid;
  return op;
}

Operation Operation::remove(std::string path) {
  Operation op;
  op.kind = OpKind::kDelete;
  op.path = std::move(path);
  return op;
}

Operation Operation::password(std::string user, std::string hash) {
  Operation op;
  op.kind = OpKind::kPassword;
  op.user = std::move(user);
  op.data = std::move(hash);
  return op;
}

std::string Operation::describe() const {
  switch (kind) {
    case OpKind::kSshKey:
      return "--ssh-key " + user;
    case OpKind::kHostname:
      return "--hostname " + data;
    case OpKind::kFile:
      return "--file " + path;
    case OpKind::kMkdir:
      return "--mkdir " + path;
    case OpKind::kDelete:
      return "--delete " + path;
    case OpKind::kPassword:
      return "--password " + user;
  }
  return "?";
}

void validate(const std::vector<Operation>& ops) {
  uint64_t total = 0;
  for (const auto& op : ops) {
    const std::string what = op.describe();
    if (op.mode && *op.mode > 07777)
      throw Error(Reason::kInvalidArgument, what + ": mode " + octal(*op.mode) + " is invalid");
    if (op.uid.has_value() != op.gid.has_value())
      throw Error(Reason::kInvalidArgument, what + ": give both the uid and the gid, or neither");
    // (uid_t)-1 is chown(2)'s "no change", not an owner.
    if ((op.uid && *op.uid == 0xffffffffu) || (op.gid && *op.gid == 0xffffffffu))
      throw Error(Reason::kInvalidArgument, what + ": uid and gid go from 0 to 4294967294");
    total += op.data.size();
    switch (op.kind) {
      case OpKind::kSshKey:
        check_user_name(op.user, what);
        check_ssh_keys(op.data, what);
        break;
      case OpKind::kHostname:
        check_hostname(op.data, what);
        break;
      case OpKind::kFile:
      case OpKind::kMkdir:
      case OpKind::kDelete:
        try {
          if (split_guest_path(op.path).empty())
            throw Error(Reason::kInvalidArgument, "the root directory cannot be the target");
        } catch (const Error& e) {
          throw Error(e.reason(), what + ": " + e.what());
        }
        break;
      case OpKind::kPassword:
        check_user_name(op.user, what);
        check_shadow_hash(op.data, what);
        break;
    }
  }
  if (total > kMaxInjectBytes)
    throw Error(Reason::kInvalidArgument,
                "the operations would write more than 1 GiB: inject large files another way");
}

void apply(Filesystem& fs, const std::vector<Operation>& ops, const InjectOptions& options) {
  if (fs.read_only())
    throw Error(Reason::kPermission, fs.describe() + ": opened read-only, cannot inject");
  validate(ops);
  Guest g(fs.handle());
  for (const auto& op : ops) {
    try {
      apply_one(g, op, options);
    } catch (const Error& e) {
      // Guest path errors start with the path, which describe() already names.
      std::string msg = e.what();
      if (!op.path.empty() && msg.rfind(op.path + ": ", 0) == 0) msg.erase(0, op.path.size() + 2);
      throw Error(e.reason(), fs.describe() + ": " + op.describe() + ": " + msg);
    }
  }
}

void inject(const std::string& image, const std::vector<Operation>& ops,
            const OpenOptions& open_options, const InjectOptions& options) {
  validate(ops);
  OpenOptions o = open_options;
  o.read_only = false;
  // Everything stays in memory until all operations succeeded.
  o.write_buffer_bytes = std::numeric_limits<size_t>::max();
  // A handful of files: read and write the bitmaps of the groups they land in, not all.
  o.bitmaps = OpenOptions::Bitmaps::kPerGroup;
  std::unique_ptr<Filesystem> fs = Filesystem::open(image, o);
  apply(*fs, ops, options);
  fs->close();
}

}  // namespace kiln::fs
