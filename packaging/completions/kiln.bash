# Bash completion for Kiln's binaries: kiln-nbd, kiln-img, kiln-io, kiln-fs, kiln-net and
# kiln-spawn. One file, installed under each binary's name in
# share/bash-completion/completions so that bash-completion loads it on demand.
# Subcommands and options are read from the binary's own --help, so they cannot drift from it.

# The long options in `PROG [SUBCOMMAND] --help` ("--name" or "--name=" when it takes a value).
_kiln_options() {
  "$@" --help 2>&1 | grep -oE -- '--[a-z0-9][a-z0-9-]*=?' | sort -u
}

# Subcommands: the words at a two-space indent in `PROG --help` (none for kiln-nbd, kiln-io).
_kiln_subcommands() {
  "$1" --help 2>&1 | sed -nE 's/^  ([a-z][a-z0-9-]+)( .*)?$/\1/p' | sort -u
}

_kiln() {
  local cur=${COMP_WORDS[COMP_CWORD]} prog=${COMP_WORDS[0]} sub= subs i
  COMPREPLY=()
  subs=$(_kiln_subcommands "$prog")
  if [[ -n $subs ]]; then
    # The subcommand is the first earlier word that names one (global options come first).
    for ((i = 1; i < COMP_CWORD; i++)); do
      if [[ $'\n'$subs$'\n' == *$'\n'"${COMP_WORDS[i]}"$'\n'* ]]; then
        sub=${COMP_WORDS[i]}
        break
      fi
    done
    if [[ -z $sub && $cur != -* ]]; then
      mapfile -t COMPREPLY < <(compgen -W "$subs" -- "$cur")
      return 0
    fi
  fi
  if [[ $cur == -* ]]; then
    mapfile -t COMPREPLY < <(compgen -W "$(_kiln_options "$prog" $sub)" -- "$cur")
    # "--socket=" waits for its value: no space after it.
    [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *= ]] && compopt -o nospace
    return 0
  fi
  # Everything else: images, sockets, directories, key files.
  mapfile -t COMPREPLY < <(compgen -f -- "$cur")
}

complete -F _kiln -o filenames kiln-nbd kiln-img kiln-io kiln-fs kiln-net kiln-spawn
