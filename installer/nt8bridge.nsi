; The nt8bridge desk setup for Windows: a per-user install, no administrator rights.
;
; Built by installer/build-windows.sh, which stages the files and passes:
;   VERSION      the setup's version (Add/Remove Programs, upgrades)
;   VI_VERSION   the same as four numbers, for the file's version resource
;   PKG_VERSION  the version of the nt8bridge wheel inside
;   STAGE        the staging folder: wheelhouse/, ninjascript/, docs/
;   OUTFILE      the setup to write
;   PIP_WHEEL    the file name of the pip wheel in the wheelhouse
;   COMPRESSOR   zlib (quick) or lzma (release, solid)
;   TARGET       amd64-unicode, or x86-unicode where makensis has no 64-bit stubs
;   SIGN_COMMAND optional: run on the setup and on the uninstaller, %1 the file
;
; Where things go (docs/install-windows.md says the same for desks):
;   %LOCALAPPDATA%\nt8bridge\app\          this setup's files: venv\, ninjascript\, docs\, setup\,
;                                          uninstall.exe; the uninstaller deletes this folder
;   %LOCALAPPDATA%\nt8bridge\              the user data folder of the sidecar: nt8bridge.sqlite and
;                                          its audit journal (nt8bridge.sqlite.audit\), the logs
;                                          (nt8bridge.log, setup.log); kept by the uninstaller
;                                          unless /PURGE
;   %APPDATA%\nt8bridge\config.toml        the configuration every nt8bridge command reads by
;                                          default, beside the audit signing key; kept likewise
;
; Silent use: setup.exe /S [/CONFIG=FILE] [/BIND=ENDPOINT] [/DB=URL] [/METRICS-PORT=N]
;   [/ACCOUNT=NAME] [/LOGON=auto|task|runkey|none] [/START]; uninstall.exe /S [/PURGE].
; Exit codes: 0 done, 1 cancelled, 2 failed (the reason is in %LOCALAPPDATA%\nt8bridge\setup.log).

!ifndef TARGET
  !define TARGET "amd64-unicode"  ; build-windows.sh passes x86-unicode where makensis has no 64-bit stubs
!endif
Unicode true
Target ${TARGET}
ManifestDPIAware true
RequestExecutionLevel user

!ifndef VERSION
  !error "VERSION is not defined: build with installer/build-windows.sh"
!endif
!ifndef PKG_VERSION
  !define PKG_VERSION "${VERSION}"
!endif
!ifndef STAGE
  !error "STAGE is not defined: build with installer/build-windows.sh"
!endif
!ifndef OUTFILE
  !define OUTFILE "nt8bridge-setup-${VERSION}.exe"
!endif
!ifndef COMPRESSOR
  !define COMPRESSOR "zlib"
!endif

!if "${COMPRESSOR}" == "lzma"
  SetCompressor /SOLID /FINAL lzma
  SetCompressorDictSize 64
!else
  SetCompressor /FINAL ${COMPRESSOR}
!endif

; Signing: the uninstaller is written by the setup on the desk, so only here, as makensis makes it,
; can it be signed with the setup (build-windows.sh --sign-command)
!ifdef SIGN_COMMAND
  !finalize `${SIGN_COMMAND}`
  !uninstfinalize `${SIGN_COMMAND}`
!endif

!define UNINST_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\nt8bridge"
!define LOGON_NAME "nt8bridge-sidecar"

Name "nt8bridge ${VERSION}"
OutFile "${OUTFILE}"
InstallDir "$LOCALAPPDATA\nt8bridge\app"
ShowInstDetails show
ShowUninstDetails show
BrandingText "nt8bridge ${VERSION}"

!ifndef VI_VERSION
  !define VI_VERSION "0.0.0.0"
!endif
VIProductVersion "${VI_VERSION}"
VIAddVersionKey "ProductName" "nt8bridge"
VIAddVersionKey "ProductVersion" "${VERSION}"
VIAddVersionKey "FileVersion" "${VERSION}"
VIAddVersionKey "FileDescription" "nt8bridge setup: NinjaTrader 8 <-> Python decision sidecar"
VIAddVersionKey "LegalCopyright" "nt8bridge"

!include MUI2.nsh
!include LogicLib.nsh
!include nsDialogs.nsh
!include FileFunc.nsh
!include WordFunc.nsh
!include x64.nsh
!include Sections.nsh

; --- state ------------------------------------------------------------------------------------
Var Python          ; the desk's CPython 3.11/3.12, 64-bit
Var VenvPython      ; $INSTDIR\venv\Scripts\python.exe
Var DataDir         ; %LOCALAPPDATA%\nt8bridge
Var LogDir
Var LogPath
Var ConfigDir       ; %APPDATA%\nt8bridge
Var ConfigFile
Var OldVersion      ; installed version before this setup, "" on a first install
Var ConfigSource    ; /CONFIG=FILE
Var CfgBind
Var CfgDb           ; "" = SQLite in the data folder
Var CfgMetricsPort
Var CfgAccount
Var LogonMethod     ; auto | task | runkey | none (auto: task, else runkey)
Var StartNow        ; 1 with /START
Var StepOut         ; last lines of the last step's output
Var StepRc          ; its exit code
Var PySearch        ; each Python candidate tried and what it answered, for the log

; config page controls
Var hBind
Var hSqlite
Var hPostgres
Var hDbUrl
Var hPort
Var hAccount

; --- pages --------------------------------------------------------------------------------------
!define MUI_ABORTWARNING
!define MUI_WELCOMEPAGE_TITLE "nt8bridge ${VERSION}"
!define MUI_WELCOMEPAGE_TEXT "This sets up the nt8bridge sidecar for your Windows user:$\r$\n$\r$\n\
- a Python environment with nt8bridge, installed from files inside this setup (no internet needed);$\r$\n\
- the configuration (next page);$\r$\n\
- the nt8bridge NinjaScript, copied into NinjaTrader 8's Custom folder (compile it in NT8 afterwards);$\r$\n\
- the sidecar started at logon, and Start-menu entries (start, stop, status, console, kill switch, logs, doctor).$\r$\n$\r$\n\
It needs 64-bit Python 3.11 or 3.12 from python.org. No administrator rights are needed.$\r$\n$\r$\n\
An existing install is upgraded: its configuration and its database are kept."
!insertmacro MUI_PAGE_WELCOME
Page custom ConfigPageCreate ConfigPageLeave
; the steps stay on screen until Next: a desk sees where NT8's folder was found and what was registered
!define MUI_FINISHPAGE_NOAUTOCLOSE
!insertmacro MUI_PAGE_INSTFILES
!define MUI_FINISHPAGE_TITLE "nt8bridge is installed"
!define MUI_FINISHPAGE_TEXT_LARGE
!define MUI_FINISHPAGE_TEXT "The sidecar starts when you log on. In NinjaTrader 8, open a NinjaScript Editor \
and compile (F5), then enable the Nt8Bridge strategy on a chart.$\r$\n$\r$\n\
Start menu, nt8bridge: start, stop, status, kill switch, logs, configuration, doctor."
!define MUI_FINISHPAGE_RUN
!define MUI_FINISHPAGE_RUN_TEXT "Start the sidecar now"
!define MUI_FINISHPAGE_RUN_FUNCTION StartSidecar
!insertmacro MUI_PAGE_FINISH

!define MUI_COMPONENTSPAGE_TEXT_TOP "The program, its Python environment, the logon entry, the Start-menu entries and the NinjaScript in NT8 are removed. The recorded data is kept unless you tick it below."
!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_COMPONENTS
!insertmacro MUI_UNPAGE_INSTFILES

!insertmacro MUI_LANGUAGE "English"

; --- helpers ------------------------------------------------------------------------------------

; A line in the details view and in the setup log.
!macro Log TEXT
  Push `${TEXT}`
  !ifdef __UNINSTALL__
    Call un.LogLine
  !else
    Call LogLine
  !endif
!macroend
!define Log "!insertmacro Log"

!macro LogLineBody
  Exch $0
  Push $1
  SetDetailsPrint both
  DetailPrint $0
  SetDetailsPrint textonly
  ${If} $LogPath != ""
    CreateDirectory $LogDir
    ClearErrors
    FileOpen $1 $LogPath a
    ${IfNot} ${Errors}
      FileSeek $1 0 END
      FileWrite $1 "$0$\r$\n"
      FileClose $1
    ${EndIf}
  ${EndIf}
  Pop $1
  Pop $0
!macroend
Function LogLine
  !insertmacro LogLineBody
FunctionEnd
Function un.LogLine
  !insertmacro LogLineBody
FunctionEnd

; Run `PYTHON ARGS` through logrun.py (run by the same Python); sets $StepRc and $StepOut.
!macro Step PYTHON ARGS
  SetDetailsPrint both
  DetailPrint `> ${PYTHON} ${ARGS}`
  SetDetailsPrint textonly
  nsExec::ExecToStack `"${PYTHON}" "$INSTDIR\setup\logrun.py" "$LogPath" "${PYTHON}" ${ARGS}`
  Pop $StepRc
  Pop $StepOut
  ${If} $StepOut != ""
    SetDetailsPrint both
    DetailPrint $StepOut
    SetDetailsPrint textonly
  ${EndIf}
!macroend
!define Step "!insertmacro Step"

; .onInit refusing to go on: the message box (answered by /SD in a silent setup, which shows nothing),
; the log (the only trace a silent setup leaves), exit code 2.
!macro RefuseInit TEXT
  ${Log} "=== nt8bridge setup ${VERSION}: stopped before installing"
  ${Log} `${TEXT}`
  MessageBox MB_OK|MB_ICONSTOP `${TEXT}` /SD IDOK
  SetErrorLevel 2
  Quit
!macroend
!define RefuseInit "!insertmacro RefuseInit"

; A step that must work: on failure, say what failed with the command's last lines, and stop.
!macro MustStep PYTHON ARGS WHAT
  ${Step} `${PYTHON}` `${ARGS}`
  ${If} $StepRc != 0
    ${Log} "FAILED (exit code $StepRc): ${WHAT}"
    MessageBox MB_OK|MB_ICONSTOP "${WHAT} failed (exit code $StepRc):$\r$\n$\r$\n$StepOut$\r$\n$\r$\nThe whole output is in $LogPath" /SD IDOK
    SetErrorLevel 2
    Abort "${WHAT} failed"
  ${EndIf}
!macroend
!define MustStep "!insertmacro MustStep"

; The first line of $0, trailing CR/LF and spaces removed (output of `python -c print(...)`).
Function FirstLine
  Exch $0
  Push $1
  Push $2
  StrCpy $2 0
  ${Do}
    StrCpy $1 $0 1 $2
    ${If} $1 == ""
    ${OrIf} $1 == "$\r"
    ${OrIf} $1 == "$\n"
      ${ExitDo}
    ${EndIf}
    IntOp $2 $2 + 1
  ${Loop}
  StrCpy $0 $0 $2
  Pop $2
  Pop $1
  Exch $0
FunctionEnd

; Is $0 a 64-bit CPython 3.11 or 3.12? Leaves its sys.executable on the stack, or "".
Function CheckPython
  Exch $0
  Push $1
  Push $2
  nsExec::ExecToStack `"$0" -c "import sys;assert (3,11)<=sys.version_info[:2]<=(3,12) and sys.maxsize>2**32;print(sys.executable)"`
  Pop $1
  Pop $2
  ${If} $1 != 0
    ; A first start can fail on a busy desk (an antivirus scanning a fresh python.exe, Wine's first
    ; start of a process): ask once more before calling this Python unusable.
    StrCpy $PySearch "$PySearch$\r$\n  $0: exit code $1, asked again"
    Sleep 1000
    nsExec::ExecToStack `"$0" -c "import sys;assert (3,11)<=sys.version_info[:2]<=(3,12) and sys.maxsize>2**32;print(sys.executable)"`
    Pop $1
    Pop $2
  ${EndIf}
  StrCpy $PySearch "$PySearch$\r$\n  $0: exit code $1: $2" 900
  StrCpy $0 ""
  ${If} $1 == 0
    Push $2
    Call FirstLine
    Pop $0
    ${IfNot} ${FileExists} $0
      StrCpy $0 ""
    ${EndIf}
  ${EndIf}
  Pop $2
  Pop $1
  Exch $0
FunctionEnd

!macro TryLauncher VER
  ${If} $Python == ""
    nsExec::ExecToStack `py -${VER} -c "import sys;print(sys.executable)"`
    Pop $0
    Pop $1
    ${If} $0 == 0
      Push $1
      Call FirstLine
      Call CheckPython
      Pop $Python
    ${EndIf}
  ${EndIf}
!macroend

; PEP 514: Software\Python\PythonCore\<ver>\InstallPath, ExecutablePath or the folder (default value)
!macro TryRegistry ROOT VER
  ${If} $Python == ""
    ReadRegStr $1 ${ROOT} "Software\Python\PythonCore\${VER}\InstallPath" "ExecutablePath"
    ${If} $1 == ""
      ReadRegStr $1 ${ROOT} "Software\Python\PythonCore\${VER}\InstallPath" ""
      ${If} $1 != ""
        StrCpy $2 $1 1 -1
        ${If} $2 == "\"
          StrCpy $1 $1 -1
        ${EndIf}
        StrCpy $1 "$1\python.exe"
      ${EndIf}
    ${EndIf}
    ${If} $1 != ""
    ${AndIf} ${FileExists} $1
      Push $1
      Call CheckPython
      Pop $Python
    ${EndIf}
  ${EndIf}
!macroend

Function FindPython
  StrCpy $Python ""
  !insertmacro TryLauncher 3.12
  !insertmacro TryLauncher 3.11
  SetRegView 64
  !insertmacro TryRegistry HKCU 3.12
  !insertmacro TryRegistry HKLM 3.12
  !insertmacro TryRegistry HKCU 3.11
  !insertmacro TryRegistry HKLM 3.11
FunctionEnd

Function SetPaths
  StrCpy $DataDir "$LOCALAPPDATA\nt8bridge"
  StrCpy $LogDir "$DataDir"
  StrCpy $LogPath "$DataDir\setup.log"
  StrCpy $ConfigDir "$APPDATA\nt8bridge"
  StrCpy $ConfigFile "$ConfigDir\config.toml"
FunctionEnd

Function un.SetPaths
  StrCpy $DataDir "$LOCALAPPDATA\nt8bridge"
  StrCpy $LogDir "$DataDir"
  StrCpy $LogPath "$DataDir\setup.log"
  StrCpy $ConfigDir "$APPDATA\nt8bridge"
  StrCpy $ConfigFile "$ConfigDir\config.toml"
FunctionEnd

; --- init -----------------------------------------------------------------------------------------
Function .onInit
  ${IfNot} ${RunningX64}
    MessageBox MB_OK|MB_ICONSTOP "nt8bridge needs 64-bit Windows (as NinjaTrader 8 does)." /SD IDOK
    SetErrorLevel 2
    Quit
  ${EndIf}
  SetRegView 64
  Call SetPaths
  StrCpy $CfgBind "tcp://127.0.0.1:5555"
  StrCpy $CfgDb ""
  StrCpy $CfgMetricsPort "9108"
  StrCpy $CfgAccount ""
  StrCpy $LogonMethod "auto"
  StrCpy $StartNow 0

  ${GetParameters} $R0
  ClearErrors
  ${GetOptions} $R0 "/CONFIG=" $ConfigSource
  ${If} ${Errors}
    StrCpy $ConfigSource ""
  ${EndIf}
  ClearErrors
  ${GetOptions} $R0 "/BIND=" $R1
  ${IfNot} ${Errors}
    StrCpy $CfgBind $R1
  ${EndIf}
  ClearErrors
  ${GetOptions} $R0 "/DB=" $R1
  ${IfNot} ${Errors}
    StrCpy $CfgDb $R1
  ${EndIf}
  ClearErrors
  ${GetOptions} $R0 "/METRICS-PORT=" $R1
  ${IfNot} ${Errors}
    StrCpy $CfgMetricsPort $R1
  ${EndIf}
  ClearErrors
  ${GetOptions} $R0 "/ACCOUNT=" $R1
  ${IfNot} ${Errors}
    StrCpy $CfgAccount $R1
  ${EndIf}
  ClearErrors
  ${GetOptions} $R0 "/LOGON=" $R1
  ${IfNot} ${Errors}
    ${If} $R1 == "auto"
    ${OrIf} $R1 == "task"
    ${OrIf} $R1 == "runkey"
    ${OrIf} $R1 == "none"
      StrCpy $LogonMethod $R1
    ${Else}
      ${RefuseInit} "/LOGON= takes auto, task, runkey or none, not '$R1'."
    ${EndIf}
  ${EndIf}
  ClearErrors
  ${GetOptions} $R0 "/START" $R1
  ${IfNot} ${Errors}
    StrCpy $StartNow 1
  ${EndIf}

  ${If} $ConfigSource != ""
    GetFullPathName $ConfigSource $ConfigSource
    ${IfNot} ${FileExists} $ConfigSource
      ${RefuseInit} "/CONFIG: $ConfigSource does not exist."
    ${EndIf}
  ${EndIf}

  ; an earlier install: upgrade it where it is
  ReadRegStr $OldVersion HKCU "${UNINST_KEY}" "DisplayVersion"
  ReadRegStr $R1 HKCU "${UNINST_KEY}" "InstallLocation"
  ${If} $R1 != ""
    StrCpy $INSTDIR $R1
  ${EndIf}
  ${If} $OldVersion != ""
    ${VersionCompare} $OldVersion "${VERSION}" $R2
    ${If} $R2 == 1
      ${IfNot} ${Cmd} `MessageBox MB_OKCANCEL|MB_ICONEXCLAMATION "nt8bridge $OldVersion is installed, newer than this setup (${VERSION}). Install ${VERSION} over it? Its configuration and database are kept; a database already upgraded by $OldVersion may not work with ${VERSION}." /SD IDOK IDOK`
        SetErrorLevel 1
        Quit
      ${EndIf}
    ${EndIf}
  ${EndIf}

  StrCpy $PySearch ""
  Call FindPython
  ${If} $Python == ""
    ${Log} "=== nt8bridge setup ${VERSION}: stopped, no usable Python 3.11 or 3.12 (64-bit) found"
    ${Log} "Python candidates:$PySearch"
    MessageBox MB_OK|MB_ICONSTOP "nt8bridge needs 64-bit Python 3.11 or 3.12, and none was found \
(asked: the py launcher, then the registry as python.org's installer writes it).$\r$\n$\r$\n\
Install Python 3.12 (or 3.11), Windows installer (64-bit), from python.org, then run this setup again." /SD IDOK
    SetErrorLevel 2
    Quit
  ${EndIf}
FunctionEnd

; --- config page --------------------------------------------------------------------------------
Function ConfigPageCreate
  ; an existing configuration is kept (upgrade, reinstall); /CONFIG replaces it
  ${If} ${FileExists} $ConfigFile
  ${OrIf} $ConfigSource != ""
    Abort
  ${EndIf}
  !insertmacro MUI_HEADER_TEXT "Configuration" "Written to $ConfigFile; change it there later (every key is documented by 'nt8bridge config show')."
  nsDialogs::Create 1018
  Pop $0
  ${If} $0 == error
    Abort
  ${EndIf}

  ${NSD_CreateLabel} 0 0 100% 10u "Sidecar endpoint (the ZeroMQ address NT8 connects to):"
  Pop $0
  ${NSD_CreateText} 0 11u 100% 12u $CfgBind
  Pop $hBind

  ${NSD_CreateLabel} 0 30u 100% 10u "Database:"
  Pop $0
  ${NSD_CreateRadioButton} 0 41u 100% 10u "SQLite file in $DataDir (default)"
  Pop $hSqlite
  ${NSD_AddStyle} $hSqlite ${WS_GROUP}
  ${NSD_OnClick} $hSqlite ConfigDbChanged
  ${NSD_CreateRadioButton} 0 53u 35% 10u "PostgreSQL, URL:"
  Pop $hPostgres
  ${NSD_OnClick} $hPostgres ConfigDbChanged
  ${NSD_CreateText} 35% 52u 65% 12u "postgresql://nt8bridge:PASSWORD@localhost:5432/nt8bridge"
  Pop $hDbUrl
  ${If} $CfgDb == ""
    ${NSD_Check} $hSqlite
    EnableWindow $hDbUrl 0
  ${Else}
    ${NSD_Check} $hPostgres
    ${NSD_SetText} $hDbUrl $CfgDb
  ${EndIf}

  ${NSD_CreateLabel} 0 72u 60% 10u "Metrics port (Prometheus, on 127.0.0.1):"
  Pop $0
  ${NSD_CreateNumber} 60% 71u 40% 12u $CfgMetricsPort
  Pop $hPort

  ${NSD_CreateLabel} 0 90u 60% 10u "NT8 account with its own risk limits (optional):"
  Pop $0
  ${NSD_CreateText} 60% 89u 40% 12u $CfgAccount
  Pop $hAccount

  ${NSD_CreateLabel} 0 110u 100% 20u "Risk limits, strategies and everything else keep their defaults; see docs\risk.md before trading a live account."
  Pop $0
  nsDialogs::Show
FunctionEnd

Function ConfigDbChanged
  Pop $0
  ${NSD_GetState} $hPostgres $0
  ${If} $0 == ${BST_CHECKED}
    EnableWindow $hDbUrl 1
  ${Else}
    EnableWindow $hDbUrl 0
  ${EndIf}
FunctionEnd

Function ConfigPageLeave
  ${NSD_GetText} $hBind $CfgBind
  ${NSD_GetText} $hPort $CfgMetricsPort
  ${NSD_GetText} $hAccount $CfgAccount
  ${NSD_GetState} $hPostgres $0
  ${If} $0 == ${BST_CHECKED}
    ${NSD_GetText} $hDbUrl $CfgDb
    StrCpy $1 $CfgDb 13
    ${If} $1 != "postgresql://"
      MessageBox MB_OK|MB_ICONEXCLAMATION "A PostgreSQL URL starts with postgresql://" /SD IDOK
      Abort
    ${EndIf}
  ${Else}
    StrCpy $CfgDb ""
  ${EndIf}
  StrCpy $1 $CfgBind 6
  ${If} $1 != "tcp://"
    MessageBox MB_OK|MB_ICONEXCLAMATION "The sidecar endpoint is a ZeroMQ TCP address, e.g. tcp://127.0.0.1:5555" /SD IDOK
    Abort
  ${EndIf}
  ${If} $CfgMetricsPort == ""
  ${OrIf} $CfgMetricsPort > 65535
    MessageBox MB_OK|MB_ICONEXCLAMATION "The metrics port is a number from 0 to 65535." /SD IDOK
    Abort
  ${EndIf}
FunctionEnd

; --- install ---------------------------------------------------------------------------------------
Section "nt8bridge" SecMain
  SectionIn RO
  ; the details list shows the steps and what they printed; files and shortcuts only pass in the status line
  SetDetailsPrint textonly
  SetRegView 64
  SetShellVarContext current
  CreateDirectory $LogDir
  StrCpy $VenvPython "$INSTDIR\venv\Scripts\python.exe"
  ${If} $OldVersion == ""
    ${Log} "=== nt8bridge setup ${VERSION}: install into $INSTDIR"
  ${Else}
    ${Log} "=== nt8bridge setup ${VERSION}: upgrade of $OldVersion in $INSTDIR"
  ${EndIf}
  ${Log} "Python: $Python (candidates:$PySearch)"

  ; the setup's own helper, first: every step below runs through it
  SetOutPath "$INSTDIR\setup"
  File "/oname=logrun.py" "${STAGE}/logrun.py"

  ; an upgrade: stop the running sidecar, then replace the environment whole
  ${If} ${FileExists} $VenvPython
    ${Log} "Stopping a running sidecar (if any)"
    ${Step} $VenvPython `-m bridge.cli stop --wait 30`
    ${If} $StepRc != 0
      ${Log} "(stop exit code $StepRc: no sidecar was running, or this version cannot stop it)"
    ${EndIf}
  ${EndIf}
  ${If} ${FileExists} "$INSTDIR\venv\*.*"
    ${Log} "Removing the previous Python environment"
    RMDir /r "$INSTDIR\venv"
    ${If} ${FileExists} "$INSTDIR\venv\*.*"
      ${Log} "FAILED: $INSTDIR\venv is in use"
      MessageBox MB_OK|MB_ICONSTOP "$INSTDIR\venv is still in use: a sidecar or another nt8bridge command is \
running from it. Stop it ('nt8bridge stop', or end pythonw.exe in Task Manager) and run this setup again." /SD IDOK
      SetErrorLevel 2
      Abort "venv in use"
    ${EndIf}
  ${EndIf}
  RMDir /r "$INSTDIR\ninjascript"
  RMDir /r "$INSTDIR\docs"

  ${Log} "Copying files"
  SetOutPath "$INSTDIR\ninjascript"
  File /r "${STAGE}/ninjascript/*"
  SetOutPath "$INSTDIR\docs"
  File /r "${STAGE}/docs/*"

  ; the wheelhouse is needed only while installing: into the setup's temporary folder
  InitPluginsDir
  SetOutPath "$PLUGINSDIR\wheelhouse"
  !if "${COMPRESSOR}" != "lzma"
    SetCompress off   ; wheels are zip files already
  !endif
  File "${STAGE}/wheelhouse/*.whl"
  !if "${COMPRESSOR}" != "lzma"
    SetCompress auto
  !endif

  ; registered before the steps that can fail, so that a failed install can still be uninstalled
  WriteUninstaller "$INSTDIR\uninstall.exe"
  WriteRegStr HKCU "${UNINST_KEY}" "DisplayName" "nt8bridge"
  WriteRegStr HKCU "${UNINST_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKCU "${UNINST_KEY}" "Publisher" "nt8bridge"
  WriteRegStr HKCU "${UNINST_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKCU "${UNINST_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKCU "${UNINST_KEY}" "QuietUninstallString" '"$INSTDIR\uninstall.exe" /S'
  WriteRegStr HKCU "${UNINST_KEY}" "DisplayIcon" "$INSTDIR\uninstall.exe"
  WriteRegStr HKCU "${UNINST_KEY}" "Python" "$Python"
  WriteRegStr HKCU "${UNINST_KEY}" "DataFolder" "$DataDir"
  WriteRegStr HKCU "${UNINST_KEY}" "ConfigFile" "$ConfigFile"
  WriteRegDWORD HKCU "${UNINST_KEY}" "NoModify" 1
  WriteRegDWORD HKCU "${UNINST_KEY}" "NoRepair" 1

  ${Log} "Creating the Python environment"
  ${MustStep} $Python `-m venv --without-pip "$INSTDIR\venv"` "Creating the Python environment ($Python -m venv)"
  ${IfNot} ${FileExists} $VenvPython
    ${Log} "FAILED: no $VenvPython after python -m venv"
    MessageBox MB_OK|MB_ICONSTOP "$Python -m venv made no $VenvPython. Repair or reinstall Python from python.org \
(with the 'py launcher' and 'pip' options), then run this setup again." /SD IDOK
    SetErrorLevel 2
    Abort "no venv python"
  ${EndIf}

  ; pip runs from its wheel (as ensurepip does), so the desk's Python needs no pip of its own
  ${Log} "Installing nt8bridge ${PKG_VERSION} and its dependencies from the setup's wheelhouse (offline)"
  ${MustStep} $VenvPython `-c "import runpy,sys;sys.path.insert(0,sys.argv.pop(1));runpy.run_module('pip',run_name='__main__',alter_sys=True)" "$PLUGINSDIR\wheelhouse\${PIP_WHEEL}" install --isolated --no-index --find-links "$PLUGINSDIR\wheelhouse" --disable-pip-version-check --no-warn-script-location --no-input pip "nt8bridge[postgres,console]==${PKG_VERSION}"` "Installing nt8bridge from the wheelhouse"
  ${MustStep} $VenvPython `-m bridge.cli --version` "Starting the installed nt8bridge"

  ; configuration: /CONFIG=FILE, else the one already there, else the wizard's answers
  CreateDirectory $ConfigDir
  ${If} $ConfigSource != ""
    ${Log} "Configuration: checking $ConfigSource"
    ${MustStep} $VenvPython `-m bridge.cli --config "$ConfigSource" config show` "Reading the configuration $ConfigSource"
    ${If} ${FileExists} $ConfigFile
      CopyFiles /SILENT $ConfigFile "$ConfigFile.bak"
      ${Log} "Configuration: the previous one saved as $ConfigFile.bak"
    ${EndIf}
    CopyFiles /SILENT $ConfigSource $ConfigFile
    ${Log} "Configuration: $ConfigSource copied to $ConfigFile"
  ${ElseIf} ${FileExists} $ConfigFile
    ${Log} "Configuration: keeping $ConfigFile"
  ${Else}
    StrCpy $R0 `-m bridge.cli config init --out "$ConfigFile" --bind "$CfgBind" --metrics-port "$CfgMetricsPort"`
    ${If} $CfgDb != ""
      StrCpy $R0 `$R0 --db "$CfgDb"`
    ${EndIf}
    ${If} $CfgAccount != ""
      StrCpy $R0 `$R0 --account "$CfgAccount"`
    ${EndIf}
    ${MustStep} $VenvPython $R0 "Writing the configuration $ConfigFile"
  ${EndIf}

  ${If} $OldVersion != ""
    ${Log} "Bringing the database schema up to date"
    ${Step} $VenvPython `-m bridge.cli db upgrade`
    ${If} $StepRc != 0
      ${Log} "WARNING: db upgrade failed (exit code $StepRc); the sidecar tries again when it starts"
      MessageBox MB_OK|MB_ICONEXCLAMATION "nt8bridge db upgrade failed (exit code $StepRc):$\r$\n$\r$\n$StepOut$\r$\n$\r$\n\
The sidecar upgrades the schema when it starts and stops if it cannot; see $LogPath." /SD IDOK
    ${EndIf}
  ${EndIf}

  ; Without NT8's folder (NT8 not installed yet, or never started) the sidecar still installs; the
  ; NinjaScript follows when the setup runs again. With it, NT8 compiles everything in its Custom folder
  ; together and a second copy of our types breaks that: the command refuses (exit 2) and the setup
  ; stops with its message.
  ${Log} "Copying the NinjaScript into NinjaTrader 8"
  ${Step} $VenvPython `-c "from bridge.nt8.deploy import find_nt8_folder as f;print(f().user_dir)"`
  ${If} $StepRc != 0
    ${Log} "WARNING: NinjaTrader 8's user folder was not found; the NinjaScript was not copied"
    MessageBox MB_OK|MB_ICONEXCLAMATION "NinjaTrader 8's user folder (usually Documents\NinjaTrader 8) was not found, so the \
NinjaScript was not copied into NT8. The rest is installed.$\r$\n$\r$\nStart NinjaTrader 8 once, then run this setup again \
(or: nt8bridge ninjascript install)." /SD IDOK
  ${Else}
    ${MustStep} $VenvPython `-m bridge.cli ninjascript install` "Copying the NinjaScript into NinjaTrader 8's Custom folder"
  ${EndIf}

  ; a Task Scheduler task at logon can need rights a desk user lacks (schtasks: access denied); the
  ; Run key never does, so auto falls back on it
  ${If} $LogonMethod == "auto"
    ${Log} "Starting the sidecar at logon (a Task Scheduler task, else the Run key)"
    ${Step} $VenvPython `-m bridge.cli service install --method task`
    ${If} $StepRc == 0
      StrCpy $LogonMethod "task"
    ${Else}
      ${Log} "The task could not be created (exit code $StepRc); using the Run key instead"
      StrCpy $LogonMethod "runkey"
      ${MustStep} $VenvPython `-m bridge.cli service install --method runkey` "Registering the sidecar to start at logon"
    ${EndIf}
  ${ElseIf} $LogonMethod != "none"
    ${Log} "Starting the sidecar at logon ($LogonMethod)"
    ${MustStep} $VenvPython `-m bridge.cli service install --method $LogonMethod` "Registering the sidecar to start at logon"
  ${Else}
    ${Log} "Not starting the sidecar at logon (/LOGON=none)"
  ${EndIf}
  WriteRegStr HKCU "${UNINST_KEY}" "LogonMethod" $LogonMethod

  ${Log} "Start-menu entries"
  SetOutPath $DataDir
  RMDir /r "$SMPROGRAMS\nt8bridge"
  CreateDirectory "$SMPROGRAMS\nt8bridge"
  CreateShortCut "$SMPROGRAMS\nt8bridge\Start the sidecar.lnk" "$INSTDIR\venv\Scripts\pythonw.exe" "-m bridge.cli serve" \
    "$INSTDIR\venv\Scripts\pythonw.exe" 0 SW_SHOWNORMAL "" "Start the nt8bridge sidecar in the background"
  CreateShortCut "$SMPROGRAMS\nt8bridge\Stop the sidecar.lnk" "$SYSDIR\cmd.exe" \
    `/s /k ""$VenvPython" -m bridge.cli stop --wait 30"` "$SYSDIR\cmd.exe" 0 SW_SHOWNORMAL "" "Stop the running sidecar cleanly"
  CreateShortCut "$SMPROGRAMS\nt8bridge\Status.lnk" "$SYSDIR\cmd.exe" \
    `/s /k ""$VenvPython" -m bridge.cli status"` "$SYSDIR\cmd.exe" 0 SW_SHOWNORMAL "" "Trading state (ACTIVE or HALTED) and NT8 sessions"
  CreateShortCut "$SMPROGRAMS\nt8bridge\KILL SWITCH - flatten and halt.lnk" "$SYSDIR\cmd.exe" \
    `/s /k ""$VenvPython" -m bridge.cli kill --reason "Start-menu kill switch" --operator "%USERNAME%""` \
    "$SYSDIR\shell32.dll" 131 SW_SHOWNORMAL "" "Flatten every instrument of every NT8 session and refuse new orders until enabled"
  CreateShortCut "$SMPROGRAMS\nt8bridge\Console.lnk" "$INSTDIR\venv\Scripts\pythonw.exe" "-m bridge.cli console --open" \
    "" 0 SW_SHOWNORMAL "" "The operator console in the browser: sessions, positions, P&L, risk, the kill switch"
  CreateShortCut "$SMPROGRAMS\nt8bridge\Logs folder.lnk" "$DataDir" "" "" 0 SW_SHOWNORMAL "" "nt8bridge.log (the sidecar's), setup.log, the database and its audit journal"
  CreateShortCut "$SMPROGRAMS\nt8bridge\Doctor.lnk" "$SYSDIR\cmd.exe" \
    `/s /k ""$VenvPython" -m bridge.cli doctor"` "$SYSDIR\cmd.exe" 0 SW_SHOWNORMAL "" "Check the install: Python, packages, config, NT8, logon entry"
  CreateShortCut "$SMPROGRAMS\nt8bridge\Configuration.lnk" "$WINDIR\notepad.exe" '"$ConfigFile"' "" 0 SW_SHOWNORMAL "" "Edit config.toml (restart the sidecar after)"
  CreateShortCut "$SMPROGRAMS\nt8bridge\Uninstall nt8bridge.lnk" "$INSTDIR\uninstall.exe"

  ${GetSize} "$INSTDIR" "/S=0K" $0 $1 $2
  WriteRegDWORD HKCU "${UNINST_KEY}" "EstimatedSize" "$0"

  ${If} $StartNow == 1
    Call StartSidecar
  ${EndIf}
  ${Log} "=== done: nt8bridge ${VERSION}"
SectionEnd

Function StartSidecar
  SetOutPath $DataDir
  ${Log} "Starting the sidecar"
  Exec `"$INSTDIR\venv\Scripts\pythonw.exe" -m bridge.cli serve`
FunctionEnd

; --- uninstall --------------------------------------------------------------------------------------
Section "-un.nt8bridge"
  SetDetailsPrint textonly
  SetRegView 64
  SetShellVarContext current
  StrCpy $VenvPython "$INSTDIR\venv\Scripts\python.exe"
  ${Log} "=== nt8bridge uninstall from $INSTDIR"
  ${If} ${FileExists} $VenvPython
  ${AndIf} ${FileExists} "$INSTDIR\setup\logrun.py"
    ${Step} $VenvPython `-m bridge.cli stop --wait 30`
    ${Step} $VenvPython `-m bridge.cli service uninstall`
    ${If} $StepRc != 0
      ${Log} "WARNING: service uninstall exit code $StepRc"
    ${EndIf}
    ${Step} $VenvPython `-m bridge.cli ninjascript uninstall`
    ${If} $StepRc != 0
      ${Log} "WARNING: the NinjaScript could not be removed from NT8 (exit code $StepRc): delete \
bin\Custom\AddOns\Nt8Bridge and bin\Custom\Strategies\Nt8Bridge.cs in the NinjaTrader 8 folder by hand"
      MessageBox MB_OK|MB_ICONEXCLAMATION "The NinjaScript could not be removed from NinjaTrader 8:$\r$\n$\r$\n$StepOut" /SD IDOK
    ${EndIf}
  ${Else}
    ${Log} "WARNING: $VenvPython is missing; the NinjaScript in NT8 is left in place"
  ${EndIf}
  ; whatever the environment could still do: no logon entry may outlive the program
  DeleteRegValue HKCU "Software\Microsoft\Windows\CurrentVersion\Run" "${LOGON_NAME}"
  nsExec::ExecToStack `"$SYSDIR\schtasks.exe" /Delete /TN "${LOGON_NAME}" /F`
  Pop $0
  Pop $1

  RMDir /r "$SMPROGRAMS\nt8bridge"
  SetOutPath $TEMP
  RMDir /r "$INSTDIR\venv"
  RMDir /r "$INSTDIR\ninjascript"
  RMDir /r "$INSTDIR\docs"
  RMDir /r "$INSTDIR\setup"
  Delete "$INSTDIR\uninstall.exe"
  RMDir "$INSTDIR"
  ${If} ${FileExists} "$INSTDIR\*.*"
    ${Log} "WARNING: $INSTDIR could not be removed whole (files in use?)"
  ${EndIf}
  DeleteRegKey HKCU "${UNINST_KEY}"
  ${Log} "Removed the program; kept $DataDir and $ConfigDir"
SectionEnd

Section /o "un.Database, audit journal, logs and configuration" SecPurge
  ; everything the sidecar recorded for this user; gone for good
  ${Log} "Purging $DataDir and $ConfigDir"
  StrCpy $LogPath ""
  SetOutPath $TEMP
  RMDir /r $DataDir
  RMDir /r $ConfigDir
SectionEnd

Function un.onInit
  SetRegView 64
  Call un.SetPaths
  ${GetParameters} $R0
  ClearErrors
  ${GetOptions} $R0 "/PURGE" $R1
  ${IfNot} ${Errors}
    !insertmacro SelectSection ${SecPurge}
  ${EndIf}
FunctionEnd

!insertmacro MUI_UNFUNCTION_DESCRIPTION_BEGIN
  !insertmacro MUI_DESCRIPTION_TEXT ${SecPurge} "Also delete $LOCALAPPDATA\nt8bridge (the SQLite database, the audit journal, the logs) \
and $APPDATA\nt8bridge (config.toml, the audit signing key). A PostgreSQL database is not touched."
!insertmacro MUI_UNFUNCTION_DESCRIPTION_END
