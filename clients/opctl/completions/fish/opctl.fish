# fish completion for opctl (opctl completion fish)
function __opctl_complete
    set -l words (commandline -opc) (commandline -ct)
    opctl __complete --shell fish -- $words[2..-1] 2>/dev/null
end
complete -c opctl -f -a '(__opctl_complete)'
