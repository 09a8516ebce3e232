# ~/.bashrc of a Workshops-on-Demand student seat
[ -z "$PS1" ] && return
PS1='\u@wod:\w\$ '
alias ll='ls -l'
